#!/bin/sh
# Run by `cargo xtask test` in one guest: the test binaries given as NAME
# EXE pairs, one after another, each under its own time limit, each
# outcome appended to RESULTS as "NAME STATUS SECONDS" (the host reports
# them, and boots again for the ones a dead guest never ran).
# Usage: run-tests.sh RESULTS LIMIT_SECS [NAME EXE]...
results=$1
limit=$2
shift 2
while [ $# -ge 2 ]; do
	name=$1
	exe=$2
	shift 2
	echo
	echo "=== $name"
	start=$(date +%s)
	timeout -k 10 "$limit" "$exe" --test-threads=1 --show-output ${RDM_TEST_FILTER:+"$RDM_TEST_FILTER"}
	status=$?
	echo "$name $status $(($(date +%s) - start))" >>"$results"
	sync
done
