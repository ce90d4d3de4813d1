# Shared by demo.sh and test.sh.

# need_packages CMD:PACKAGE ... — install the Debian packages whose command
# is missing (as root), or stop with the apt-get line to run.
need_packages() {
  local missing="" pair
  for pair in "$@"; do
    if ! command -v "${pair%%:*}" >/dev/null && [[ " $missing " != *" ${pair#*:} "* ]]; then
      missing="$missing ${pair#*:}"
    fi
  done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
  else
    echo "error: missing$missing; install them (apt-get install$missing)" >&2
    exit 1
  fi
}
