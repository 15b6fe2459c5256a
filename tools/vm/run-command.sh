# Sourced by both stage 2 scripts: runs the requested command in the
# caller's working directory with the caller's chosen environment (argv
# and environment are NUL-separated files, so any byte but NUL survives
# the trip), with its output on the console, and records its exit status
# in the control dir. Expects CTL; reads stdin from $1.
run_command() {
	local status
	mapfile -d '' ARGS <"$CTL/args"
	mapfile -d '' ENVS <"$CTL/env"
	CWD=$(cat "$CTL/cwd")
	# The host retries a boot that panics before this point (TCG's SMP
	# code patching sometimes does, under load); never once it ran.
	: >"$CTL/started"
	(
		cd "$CWD" || exit 127
		# Only the variables xtask passed through: drop everything else.
		for v in $(compgen -e); do unset "$v"; done
		for kv in "${ENVS[@]}"; do export "${kv?}"; done
		# For a command that must report its own status (it powers off hard).
		export RDM_VM_CTL="$CTL"
		exec "${ARGS[@]}"
	) <"$1" >/dev/console 2>&1
	status=$?
	echo "$status" >"$CTL/status.tmp" && mv "$CTL/status.tmp" "$CTL/status"
	# Also what the command wrote in the tree, whose 9p mount caches
	# writes (cache=loose), reaches the host before the power goes.
	sync
	# Keep "reboot: Power down" and the like out of the command's output.
	echo 0 >/proc/sys/kernel/printk
}
