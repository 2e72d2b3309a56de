# db.sh: where the corpora are on this machine; run.sh sources it. One variable per corpus:
#
#   a path      the corpus is there (it is only read, never written)
#   downloads   the recipe's data stage downloads it into ./downloads (LibriSpeech, MUSAN and
#               RIRS_NOISES are freely downloadable; VoxCeleb is not)
#   empty       not available here: a stage that needs it stops and says which variable to fill
#
# Expected layouts: LIBRISPEECH holds LibriSpeech/<part>/ (e.g. train-clean-100, dev-clean);
# VOXCELEB1 and VOXCELEB2 hold wav/ (or dev/aac/) per release; MUSAN holds music/ noise/ speech/;
# RIRS_NOISES holds simulated_rirs/ and real_rirs_isotropic_noises/.
LIBRISPEECH=
VOXCELEB1=
VOXCELEB2=
MUSAN=
RIRS_NOISES=

# Host-specific values, e.g.:
# if [[ "$(hostname -d 2> /dev/null)" == cluster.example.org ]]; then
#     LIBRISPEECH=/data/corpora
#     MUSAN=/data/corpora/musan
# fi
