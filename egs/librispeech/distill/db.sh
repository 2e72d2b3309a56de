# db.sh: where the corpora of this recipe are on this machine; run.sh and local/*.sh source it.
#
#   a path   the corpus is there (only read, never written)
#   empty    use the embedded mini corpus instead: stage 0/1 synthesize it under ${mini_dir}
#            (downloads/mini by default) and say so in the log
#
# A path that does not exist stops the stage with a message naming the variable.
#
# LIBRISPEECH   the directory holding LibriSpeech/ (LibriSpeech/train-clean-100/, dev-clean/, ...,
#               SPEAKERS.TXT), or LibriSpeech/ itself
# MUSAN         the musan/ directory (noise/ music/ speech/)
# RIRS_NOISES   RIRS_NOISES/ (simulated_rirs/, real_rirs_isotropic_noises/) or the directory holding it
LIBRISPEECH=
MUSAN=
RIRS_NOISES=

# Host-specific values, e.g.:
# if [[ "$(hostname -d 2> /dev/null)" == cluster.example.org ]]; then
#     LIBRISPEECH=/data/corpora
#     MUSAN=/data/corpora/musan
#     RIRS_NOISES=/data/corpora/RIRS_NOISES
# fi
