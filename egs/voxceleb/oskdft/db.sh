# db.sh: where the corpora of this recipe are on this machine; run.sh and local/*.sh source it.
#
#   a path   the corpus is there (only read, never written)
#   empty    use the embedded mini corpus instead: stage 0/1 synthesize it under ${mini_dir}
#            (downloads/mini by default) and say so in the log. VoxCeleb: the mini corpus is
#            used when VOXCELEB1 and VOXCELEB2 are both empty.
#
# A path that does not exist stops the stage with a message naming the variable.
#
# VOXCELEB1     VoxCeleb1 root: dev/wav/ and test/wav/ (the two zips unpacked side by side), or
#               one wav/ holding both; the cleaned trial lists veri_test2.txt, list_test_all2.txt,
#               list_test_hard2.txt in it or in its meta/ (https://www.robots.ox.ac.uk/~vgg/data/voxceleb/meta/)
# VOXCELEB2     VoxCeleb2 root: dev/aac/ (and test/aac/), m4a read through ffmpeg, or converted .wav
# MUSAN         the musan/ directory (noise/ music/ speech/)
# RIRS_NOISES   RIRS_NOISES/ (simulated_rirs/, real_rirs_isotropic_noises/) or the directory holding it
VOXCELEB1=
VOXCELEB2=
# VOXCELEB1_IDEN_SPLIT: VoxCeleb1's iden_split.txt for the SID probe of stage 6 (default: ${VOXCELEB1}/iden_split.txt,
# then ${VOXCELEB1}/meta/iden_split.txt)
VOXCELEB1_IDEN_SPLIT=
MUSAN=
RIRS_NOISES=

# Host-specific values, e.g.:
# if [[ "$(hostname -d 2> /dev/null)" == cluster.example.org ]]; then
#     VOXCELEB1=/data/voxceleb1
#     VOXCELEB2=/data/voxceleb2
# fi
