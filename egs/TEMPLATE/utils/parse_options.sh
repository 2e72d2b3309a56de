# parse_options.sh: turn '--name value' options into shell variables (conventions §2.1).
#
# Source it after giving every option variable its default:
#
#     stage=0
#     stop_stage=100
#     use_gpu=false
#     help_message="Usage: $0 [options] <data-dir>"
#     . utils/parse_options.sh
#
# '--stop-stage 3' and '--stop_stage 3' then both set stop_stage=3, and "$@" holds what follows
# the options. The rules:
#
#   * '--config FILE' (any number of times) is sourced before anything else, left to right, as
#     shell assignments; values given on the command line always win over config values,
#     whatever their order.
#   * Options come before positional arguments: parsing stops at the first argument that does
#     not start with '--', at an empty argument, or after '--'.
#   * Every option takes exactly one value, even one that starts with '--'
#     ('--validate-opts --non-print' is fine). A repeated option keeps its last value.
#   * Errors (exit 1, message on stderr): an option naming a variable the script never set,
#     '--name=value', an option without its value, and a value other than true/false for a
#     variable that holds true or false; an empty $cmd when the script has a cmd variable.
#   * Values are taken literally. Unlike Kaldi's parse_options.sh, which evaluates them, a value
#     is never expanded a second time: after  --dir '$HOME/x'  the variable holds the seven
#     characters $HOME/x, and quotes or backquotes in a value cannot break the assignment.
#     Let the calling shell expand what should be expanded (--dir "$HOME/x").
#   * '--help' or '-h' prints $help_message (or "No help found.") to stderr and exits 0.
#
# Because the file is sourced, 'exit' ends the calling script. Works under 'set -euo pipefail'.

_po_args=("$@")
_po_k=0
while [ "${_po_k}" -lt "${#_po_args[@]}" ]; do
    case "${_po_args[${_po_k}]}" in
        --config)
            if [ "$((_po_k + 1))" -ge "${#_po_args[@]}" ]; then
                echo "$0: option --config needs a file name" >&2
                exit 1
            fi
            _po_file=${_po_args[$((_po_k + 1))]}
            if [ ! -f "${_po_file}" ] || [ ! -r "${_po_file}" ]; then
                echo "$0: missing config file '${_po_file}' (given with --config)" >&2
                exit 1
            fi
            # shellcheck disable=SC1090
            . "${_po_file}" || { echo "$0: sourcing config file '${_po_file}' failed" >&2; exit 1; }
            _po_k=$((_po_k + 2))
            ;;
        --help | -h | --) break ;;
        --*) _po_k=$((_po_k + 2)) ;;
        *) break ;;
    esac
done

while [ "$#" -gt 0 ]; do
    case "$1" in
        --help | -h)
            if [ -n "${help_message:-}" ]; then
                printf '%s\n' "${help_message}" >&2
            else
                echo "No help found." >&2
            fi
            exit 0
            ;;
        --)
            shift
            break
            ;;
        --*=*)
            echo "$0: options to scripts must be of the form --name value, got '$1' (write '${1%%=*} ${1#*=}')" >&2
            exit 1
            ;;
        --*)
            if [ "$#" -lt 2 ]; then
                echo "$0: option $1 needs a value (options are '--name value')" >&2
                exit 1
            fi
            if [ "$1" = --config ]; then
                shift 2
                continue
            fi
            _po_name=${1#--}
            _po_name=${_po_name//-/_}
            if ! [[ "${_po_name}" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [[ "${_po_name}" == _po_* ]] \
                    || [ -z "${!_po_name+set}" ]; then
                echo "$0: invalid option $1 (the script has no variable '${_po_name}')" >&2
                exit 1
            fi
            _po_old=${!_po_name}
            if [ "${_po_old}" = true ] || [ "${_po_old}" = false ]; then
                if [ "$2" != true ] && [ "$2" != false ]; then
                    echo "$0: expected \"true\" or \"false\": $1 $2" >&2
                    exit 1
                fi
            fi
            printf -v "${_po_name}" '%s' "$2"
            shift 2
            ;;
        *) break ;;
    esac
done

if [ -n "${cmd+set}" ] && [ -z "${cmd}" ]; then
    echo "$0: empty argument to --cmd option" >&2
    exit 1
fi
unset _po_args _po_k _po_file _po_name _po_old
true
