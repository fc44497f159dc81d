# Shared by the end-to-end scripts (sourced, not a test itself).
# check NAME EXPECTED_STATUS PATTERN -- COMMAND...: runs COMMAND, passes when it exits with
# EXPECTED_STATUS and its output (stdout + stderr) matches the extended regex PATTERN.
fails=0
check() {
    local name="$1" want="$2" pattern="$3"
    shift 4
    local out status
    out="$("$@" 2>&1)"
    status=$?
    if [ "$status" -ne "$want" ] || ! grep -qE -- "$pattern" <<<"$out"; then
        echo "FAIL $name: status $status (want $want), output:"
        echo "$out" | head -20
        fails=$((fails + 1))
    else
        echo "ok   $name"
    fi
}
