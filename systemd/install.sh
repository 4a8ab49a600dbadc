#!/bin/sh
# Install monitord as a systemd service from a wheel or a source tree (README "Running in production").
#   sudo systemd/install.sh dist/monitord-0.1.0-py3-none-any.whl      # or: sudo systemd/install.sh .
# Then edit /etc/monitord/monitord.yaml and /etc/monitord/env, and: systemctl daemon-reload && systemctl enable --now monitord
# Every place is a variable so tests/e2e/test_install.py runs this very script into a temporary directory.
set -eu
SOURCE=${1:?usage: install.sh WHEEL_OR_SOURCE_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
PREFIX=${PREFIX:-/opt/monitord}                 # the venv: runtime dependencies only
BIN_LINK=${BIN_LINK:-/usr/local/bin/monitord}  # the unit's ExecStart
CONF_DIR=${CONF_DIR:-/etc/monitord}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}

"$PYTHON" -m venv "$PREFIX"
"$PREFIX/bin/python" -m pip install --quiet "$SOURCE"
install -d -m 0755 "$(dirname "$BIN_LINK")"
ln -sf "$PREFIX/bin/monitord" "$BIN_LINK"
install -d -m 0755 "$CONF_DIR"
[ -e "$CONF_DIR/monitord.yaml" ] || install -m 0644 "$HERE/../monitord.yaml" "$CONF_DIR/monitord.yaml"
[ -e "$CONF_DIR/env" ] || install -m 0600 /dev/null "$CONF_DIR/env"   # secrets, as KEY=value lines
"$BIN_LINK" config check -c "$CONF_DIR/monitord.yaml"                  # exit 2 and the YAML path if wrong
install -d -m 0755 "$UNIT_DIR"
install -m 0644 "$HERE/monitord.service" "$UNIT_DIR/monitord.service"
echo "installed: $("$BIN_LINK" --version 2>/dev/null || echo monitord) in $PREFIX; config $CONF_DIR; unit $UNIT_DIR/monitord.service"
