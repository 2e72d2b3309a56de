# db.sh: where the corpora of this recipe are on this machine; run.sh and local/*.sh source it.
#
#   a path   the corpus is there (only read, never written)
#   empty    use the embedded mini corpus instead: stage 0 synthesizes it under ${mini_dir}
#            (downloads/mini by default) and says so in the log
#
# SPEECH_COMMANDS       speech_commands_v0.01 unpacked (yes/ no/ ... _background_noise_/, validation_list.txt,
#                       testing_list.txt): KS
# SPEECH_COMMANDS_TEST  speech_commands_test_set_v0.01 unpacked (SUPERB's KS test set); empty: the clips of
#                       testing_list.txt (the standard split's test part)
# FLUENT_COMMANDS       fluent_speech_commands_dataset (data/*_data.csv, wavs/): IC
# LIBRISPEECH           the directory holding LibriSpeech/ (train-clean-100/ dev-clean/ test-clean/): PR
# LEXICON               extra pronunciation lexicons for PR, consulted before CMUdict (e.g. OpenSLR 11
#                       librispeech-lexicon.txt, which covers every LibriSpeech word)
# VOXCELEB1             VoxCeleb1 (dev/wav/ test/wav/): SID
# VOXCELEB1_IDEN_SPLIT  iden_split.txt (default: ${VOXCELEB1}/iden_split.txt or ${VOXCELEB1}/meta/iden_split.txt)
SPEECH_COMMANDS=
SPEECH_COMMANDS_TEST=
FLUENT_COMMANDS=
LIBRISPEECH=
LEXICON=
VOXCELEB1=
VOXCELEB1_IDEN_SPLIT=
