#!/bin/sh
# install_prefix: cmake --install into a temporary prefix, then use what it put there: the
# programs run (goldfinchd --version, gf --help), pkg-config's flags for goldfinch compile and
# link a small program against gfclient.h, the man pages, the Python client with its bindings
# and the systemd unit are where they belong.
# usage: install_prefix.sh BUILD_DIR CC [SANITIZERS]
# (SANITIZERS: the build's GF_SANITIZE; a program linking its libraries needs their runtimes)
set -u
B=$1
CC=$2
SAN=${3:-}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gf_install.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
P=$TMP/prefix
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
cmake --install "$B" --prefix "$P" >"$TMP/install.log" 2>&1 || { cat "$TMP/install.log"; echo "FAIL: cmake --install"; exit 1; }

"$P/bin/goldfinchd" --version >"$TMP/out" 2>&1 || fail "installed goldfinchd --version: $(cat "$TMP/out")"
grep -q '^goldfinchd [0-9]*\.[0-9]*\.[0-9]*' "$TMP/out" || fail "goldfinchd --version: $(cat "$TMP/out")"
"$P/bin/gf" --help >"$TMP/out" 2>&1 || fail "installed gf --help exited non-zero"
grep -q '^usage: gf' "$TMP/out" || fail "gf --help: $(head -3 "$TMP/out")"
for p in goldfinchd gf gf-run gf-convert gf-cache gf-tokenize gf-eval gf-bench gf-passkey gf-slurm; do
	[ -x "$P/bin/$p" ] || fail "no $P/bin/$p"
done
for p in goldfinchd gf gf-cache gf-run; do
	[ -s "$P/share/man/man1/$p.1" ] || fail "no man page $p.1"
done
grep -q '^\.TH GOLDFINCHD 1' "$P/share/man/man1/goldfinchd.1" || fail "goldfinchd.1 is no man page"
[ -s "$P/lib/systemd/system/goldfinchd.service" ] || fail "no systemd unit"
grep -q "^ExecStart=.*/bin/goldfinchd\$" "$P/lib/systemd/system/goldfinchd.service" || fail "unit's ExecStart"

# The Python client and its bindings, importable from the prefix's dist-packages.
py=$(ls -d "$P"/lib/python3*/dist-packages 2>/dev/null | head -1)
if [ -z "$py" ] || [ ! -f "$py/gf_client.py" ] || [ ! -f "$py/goldfinch_pb2.py" ]; then
	fail "no gf_client.py and goldfinch_pb2.py under $P/lib/python3*/dist-packages"
elif /usr/bin/python3 -c 'import google.protobuf' 2>/dev/null; then
	PYTHONPATH=$py /usr/bin/python3 -c 'import gf_client; gf_client.load_bindings()' 2>"$TMP/py.err" ||
		fail "import gf_client from $py: $(cat "$TMP/py.err")"
fi

# pkg-config --cflags --libs goldfinch: a program against gfclient.h compiles and links.
cat >"$TMP/hello.c" <<'C'
#include <gfclient.h>
#include <goldfinch_version.h>
#include <stdio.h>

int main(int argc, char **argv)
{
	char err[GFC_ERR_LEN] = "";
	gfc_options o;
	gfc_conn *c = NULL;
	int rc;

	gfc_options_default(&o);
	o.server = argc > 1 ? argv[1] : "unix:/nonexistent/goldfinch.sock";
	o.timeout_s = 1;
	rc = gfc_init(&c, &o, err);
	if (!rc)
		rc = gfc_connect(c, err);
	printf("goldfinch %s: %s: %s\n", GOLDFINCH_VERSION, rc ? "no server" : "connected", err);
	gfc_close(c);
	return 0;
}
C
export PKG_CONFIG_PATH="$(dirname "$(ls "$P"/lib*/pkgconfig/goldfinch.pc "$P"/lib/*/pkgconfig/goldfinch.pc 2>/dev/null | head -1)")"
flags=$(pkg-config --cflags --libs goldfinch 2>"$TMP/pc.err") || fail "pkg-config goldfinch: $(cat "$TMP/pc.err")"
# shellcheck disable=SC2086
$CC -std=c11 -Wall -Wextra -Werror -Wno-missing-braces ${SAN:+-fsanitize=$SAN} -o "$TMP/hello" "$TMP/hello.c" $flags 2>"$TMP/cc.err" ||
	fail "compile and link against gfclient.h with: $flags: $(head -20 "$TMP/cc.err")"
if [ -x "$TMP/hello" ]; then
	"$TMP/hello" >"$TMP/out" 2>&1 && grep -q '^goldfinch [0-9.]*: no server' "$TMP/out" ||
		fail "the program linked against libgfclient: $(cat "$TMP/out")"
fi
[ $fails -eq 0 ] && echo PASS
exit $fails
