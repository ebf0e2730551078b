#!/usr/bin/env bash
# Sum the test counts of a `make test` log (cargo test result lines and
# pg_regress's "All N tests passed") into one closing line: "N passed, N failed".
set -uo pipefail
log=${1:?usage: test-summary.sh LOG}
passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ passed; [0-9]+ failed' "$log" | awk '{s+=$3} END {print s+0}')
sql=$(grep -Eo 'All [0-9]+ tests passed' "$log" | awk '{s+=$2} END {print s+0}')
sql_failed=$(grep -Eo '[0-9]+ of [0-9]+ tests failed' "$log" | awk '{s+=$1} END {print s+0}')
echo "$((passed + sql)) passed, $((failed + sql_failed)) failed"
[ "$((failed + sql_failed))" -eq 0 ]
