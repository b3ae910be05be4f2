#!/usr/bin/env bash
# build_standalone.sh SOURCE_DIR WORK_DIR
#
# Checks that the SDK is self-sufficient: a plugin builds from sdk/include alone, as a third
# party would build it, with no other aiorun header and no aiorun build tree.
#   a) compiles plugins/echo/echo.c, tests/plugins/t_ok.c and sdk/template/template.c (and,
#      for good measure, every other fixture) with plain cc -std=c11 -Wall -Wextra -Werror
#      -shared -fPIC -fvisibility=hidden -I SOURCE_DIR/sdk/include;
#   b) configures and builds sdk/template with its own CMakeLists.txt, once with
#      -DAIORUN_SDK_DIR and once through pkg-config with the aiorun-plugin.pc the SDK ships
#      (pointed at the source tree; skipped when pkg-config is missing);
#   c) checks with nm -D --defined-only that each plugin exports aiorun_plugin_entry and no
#      other function (t_no_entry must not export it).
# Exits non-zero with a message naming the failing step.
set -u

if [ $# -ne 2 ]; then
    echo "usage: $0 SOURCE_DIR WORK_DIR" >&2
    exit 2
fi
src=$(cd "$1" && pwd) || { echo "build_standalone: no source dir $1" >&2; exit 2; }
work=$2
mkdir -p "$work" && work=$(cd "$work" && pwd) || { echo "build_standalone: cannot create $2" >&2; exit 2; }
cc=${CC:-cc}
sdk_include=$src/sdk/include
failures=0

fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# c) exactly one exported function, and it is the entry point
check_exports() {
    local so=$1 want_entry=$2 funcs
    if [ ! -f "$so" ]; then
        fail "$so was not built"
        return
    fi
    funcs=$(nm -D --defined-only "$so" | awk '$2 == "T" { print $3 }') || {
        fail "nm -D failed on $so"
        return
    }
    if [ "$want_entry" = yes ]; then
        if ! grep -qx 'aiorun_plugin_entry' <<<"$funcs"; then
            fail "$so does not export aiorun_plugin_entry (exported functions: ${funcs:-none})"
        elif [ "$(grep -c . <<<"$funcs")" -ne 1 ]; then
            fail "$so exports more than aiorun_plugin_entry:" $funcs
        else
            echo "ok: $so exports only aiorun_plugin_entry"
        fi
    else
        if grep -qx 'aiorun_plugin_entry' <<<"$funcs"; then
            fail "$so exports aiorun_plugin_entry but must not"
        else
            echo "ok: $so does not export aiorun_plugin_entry"
        fi
    fi
}

# a) plain compiler, SDK headers only
compile() {
    local source=$1 out=$2
    if "$cc" -std=c11 -Wall -Wextra -Werror -shared -fPIC -fvisibility=hidden \
        -I "$sdk_include" "$source" -o "$out"; then
        echo "ok: compiled $source"
    else
        fail "$source does not compile against $sdk_include alone"
    fi
}

compile "$src/plugins/echo/echo.c" "$work/echo.so"
compile "$src/tests/plugins/t_ok.c" "$work/t_ok.so"
compile "$src/sdk/template/template.c" "$work/template.so"
check_exports "$work/echo.so" yes
check_exports "$work/t_ok.so" yes
check_exports "$work/template.so" yes

for fixture in "$src"/tests/plugins/t_*.c; do
    name=$(basename "$fixture" .c)
    [ "$name" = t_ok ] && continue
    compile "$fixture" "$work/$name.so"
    if [ "$name" = t_no_entry ]; then
        check_exports "$work/$name.so" no
    else
        check_exports "$work/$name.so" yes
    fi
done

# b) the template's own CMake project
build_template() {
    local label=$1 build=$2
    shift 2
    rm -rf "$build"
    if ! cmake -S "$src/sdk/template" -B "$build" "$@" >"$build.log" 2>&1; then
        cat "$build.log" >&2
        fail "sdk/template does not configure ($label)"
        return
    fi
    if ! cmake --build "$build" >>"$build.log" 2>&1; then
        cat "$build.log" >&2
        fail "sdk/template does not build ($label)"
        return
    fi
    echo "ok: sdk/template builds with its own CMakeLists.txt ($label)"
    check_exports "$build/template.so" yes
}

build_template "AIORUN_SDK_DIR" "$work/tmpl" -DAIORUN_SDK_DIR="$sdk_include"

if command -v pkg-config >/dev/null 2>&1; then
    # The .pc the SDK installs, with its prefix pointed at the source tree's sdk/.
    mkdir -p "$work/pkgconfig"
    sed -e "s|@CMAKE_INSTALL_PREFIX@|$src/sdk|" -e 's|@CMAKE_INSTALL_INCLUDEDIR@|include|' \
        -e 's|@CMAKE_INSTALL_LIBDIR@|lib|' -e 's|@PROJECT_VERSION@|0.0.0|' \
        "$src/sdk/aiorun-plugin.pc.in" >"$work/pkgconfig/aiorun-plugin.pc"
    PKG_CONFIG_PATH="$work/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" \
        build_template "pkg-config" "$work/tmpl-pc"
else
    echo "skip: pkg-config not found; template's pkg-config path not checked"
fi

if [ "$failures" -ne 0 ]; then
    echo "build_standalone: $failures check(s) failed" >&2
    exit 1
fi
echo "build_standalone: all checks passed"
