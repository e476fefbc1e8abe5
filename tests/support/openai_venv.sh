# Sourced by the kvtc serve tests: openai_venv NAME sets $openai_python to a
# Python with the openai package (tests/serve-requirements.txt) in
# $KVTC_BUILD_DIR/serve-venv, installing it once (under a lock: the tests may
# run at once), or to "" after printing why the client part is skipped.
openai_venv() {
  local venv="${KVTC_BUILD_DIR:-.}/serve-venv"
  openai_python=""
  (
    flock 9
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
      python3 -m venv "$venv" >/dev/null 2>&1 &&
        "$venv/bin/pip" install -q -r "${KVTC_SOURCE_DIR:-..}/tests/serve-requirements.txt" >/dev/null 2>&1
    fi
  ) 9>"$venv.lock"
  if "$venv/bin/python" -c "import openai" 2>/dev/null; then
    openai_python="$venv/bin/python"
  else
    echo "$1: the openai client part skipped: cannot install tests/serve-requirements.txt (offline?)"
  fi
}
