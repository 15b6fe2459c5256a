use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
pub use rdm_ublk_server::dax_path::DaxPolicy as Dax;
pub use rdm_ublk_server::features::ZeroCopy;
pub use rdm_ublk_server::recovery::Recovery;

const AFTER_HELP: &str = "\
Tables use the dmsetup syntax, one segment per line, numbers in 512-byte sectors:
  <start> <length> linear <dev> <offset>
  <start> <length> striped <#stripes> <chunk_sectors> (<dev> <offset>)+
  <start> <length> zero
  <start> <length> error
  <start> <length> flakey <dev> <offset> <up_s> <down_s> [<#features> <features>...]
  <start> <length> delay <dev> <offset> <ms> [<wdev> <woffset> <wms> [<fdev> <foffset> <fms>]]
<dev> is a regular file, a block device, or an NBD export: nbd://HOST[:PORT]/EXPORT
or nbd+unix:///EXPORT?socket=PATH. Lines starting with # are ignored.

Examples:
  rdm create data --table '0 2097152 linear /srv/a.img 0'      # prints /dev/ublkbN once it is live
  rdm create fast --zero-copy on fast.table                       # table in a file; '-' reads stdin
  rdm ls [--json]                                                 # dead servers show as dead
  rdm table data
  rdm status data [--json|--dm] # mode, queues, per-segment and per-device counters, A/D health
  rdm features [--json]         # the kernel's ublk features and the data path rdm picks
  rdm remove data [--force]     # drains, fdatasyncs the backing files, deletes the device
  rdm recover data              # a new server for a device whose server died
  rdm reload data new.table; rdm resume data   # replace the live table (dmsetup load + resume)
  rdm suspend data; rdm resume data           # hold I/O (fs frozen), then let it run

Exit codes: 0 success, 1 the operation failed (bad table, unusable backing
file, device error), 2 wrong usage or not supported by this build or kernel.";

/// rdm: device-mapper tables served from userspace as ublk block devices.
#[derive(Debug, Parser)]
#[command(name = "rdm", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a device from a table (or check the table with --dry-run).
    #[command(after_help = CREATE_EXAMPLES)]
    Create(CreateArgs),
    /// Remove a device: drain in-flight I/O, flush the backing files, delete it.
    Remove {
        name: String,
        /// Also clean up a device whose server died, and kill a server that
        /// does not stop.
        #[arg(long)]
        force: bool,
    },
    /// List devices (a device whose server died shows as dead).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Re-attach a new server to a device whose server died: the device
    /// kept its I/O waiting (or failing, with --recovery fail-io); the
    /// backing files must be the same and not smaller.
    Recover {
        name: String,
        #[arg(long)]
        json: bool,
        /// Stay in the foreground instead of detaching the server.
        #[arg(long)]
        foreground: bool,
    },
    /// Print a device's table (or the inactive one `reload` loaded).
    Table {
        name: String,
        /// The table loaded by `rdm reload`, not yet swapped in.
        #[arg(long)]
        inactive: bool,
    },
    /// Load a new table beside the live one (dmsetup load); `rdm resume`
    /// swaps it in. Checked against the backing files as `create` checks;
    /// I/O is not touched.
    #[command(after_help = RELOAD_EXAMPLES)]
    Reload(ReloadArgs),
    /// Drop the table `rdm reload` loaded.
    Clear { name: String },
    /// Hold new I/O (it waits, nothing fails), let in-flight I/O finish,
    /// flush the backing files; a mounted file system is frozen first.
    Suspend {
        name: String,
        /// Do not freeze the file system mounted on the device.
        #[arg(long)]
        nolockfs: bool,
        /// Do not flush the backing devices.
        #[arg(long)]
        noflush: bool,
        /// Print the server's answer (e.g. how long draining took).
        #[arg(long)]
        json: bool,
    },
    /// Swap in the table `rdm reload` loaded (if any; the device size
    /// follows it), let held I/O run, thaw the file system.
    Resume {
        name: String,
        /// Print the server's answer (e.g. how long I/O was held).
        #[arg(long)]
        json: bool,
    },
    /// Send a message to the target holding SECTOR (dmsetup message),
    /// e.g. `rdm message data 0 mark before-upgrade` for log-writes; the
    /// target's answer is printed.
    Message {
        name: String,
        /// A sector inside the target's segment.
        sector: u64,
        /// The message's words.
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
        message: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a device's mode, queues and per-segment/per-device counters.
    Status {
        name: String,
        #[arg(long, conflicts_with = "dm")]
        json: bool,
        /// Print only each segment's status line, as `dmsetup status`
        /// does (`<start> <length> <type> <status>`).
        #[arg(long)]
        dm: bool,
    },
    /// For udev rules: print the rdm name of a ublk block device (ublkbN).
    #[command(hide = true)]
    UdevName { kernel_name: String },
    /// For udev rules: print the owner (`UID GID`) of a ublk device node
    /// (ublkbN or ublkcN), as the kernel recorded it at ADD_DEV.
    #[command(hide = true)]
    UdevOwner { kernel_name: String },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), generated from this command line.
    #[command(hide = true)]
    Man,
    /// Show the kernel's ublk features and the data path rdm would use.
    Features {
        #[arg(long)]
        json: bool,
    },
}

const CREATE_EXAMPLES: &str = "\
Examples:
  rdm create data --table '0 2097152 linear /srv/a.img 0'
  rdm create fast --table '0 8388608 striped 4 128 /p/0 0 /p/1 0 /p/2 0 /p/3 0'
  rdm create mixed mixed.table            # table in a file
  echo '0 2048 zero' | rdm create z -     # table on stdin
  rdm create data --dry-run --json --table '0 2048 linear /srv/a.img 0'
In --table, ';' also separates lines.";

const RELOAD_EXAMPLES: &str = "\
Examples:
  # grow: append a segment, swap it in, grow the file system online
  rdm reload data --table '0 2097152 linear /srv/a.img 0;2097152 2097152 linear /srv/b.img 0'
  rdm resume data && resize2fs /dev/ublkb0
  # move a segment to another file (as pvmove does): copy while suspended
  rdm suspend data && cp /srv/a.img /srv/c.img
  rdm reload data --table '0 2097152 linear /srv/c.img 0' && rdm resume data
A size change needs Linux 6.16+ (UPDATE_SIZE); without it such a reload is refused.";

#[derive(Debug, Args)]
pub struct ReloadArgs {
    pub name: String,
    /// File holding the table, or - for standard input.
    #[arg(conflicts_with = "table", required_unless_present = "table")]
    pub file: Option<PathBuf>,
    /// The table itself; ';' separates lines.
    #[arg(long, value_name = "TEXT")]
    pub table: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Device name, unique on this host.
    pub name: String,
    /// File holding the table, or - for standard input.
    #[arg(conflicts_with = "table", required_unless_present = "table")]
    pub file: Option<PathBuf>,
    /// The table itself; ';' separates lines.
    #[arg(long, value_name = "TEXT")]
    pub table: Option<String>,
    /// Parse and check the table against the backing files, print the
    /// normalized table, create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Serve the device read-only (then backing files may be read-only and
    /// ranges may be mapped more than once).
    #[arg(long)]
    pub read_only: bool,
    /// Logical block size of the device in bytes.
    #[arg(long, default_value_t = 512, value_parser = parse_block_size)]
    pub block_size: u32,
    /// Number of hardware queues (one server thread and io_uring each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub queues: u16,
    /// Queue depth.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub depth: u16,
    /// Zero copy: auto uses it when the kernel offers it.
    #[arg(long, value_enum, default_value_t = ZeroCopy::Auto)]
    pub zero_copy: ZeroCopy,
    /// DAX pass-through: auto falls back when a device cannot, required
    /// fails instead, off never probes.
    #[arg(long, value_enum, default_value_t = Dax::Auto)]
    pub dax: Dax,
    /// When the server dies: `reissue` holds I/O until `rdm recover` and
    /// re-issues what was in flight; `fail-io` fails I/O until then
    /// (kernel 6.13+); `off` leaves a dead device.
    #[arg(long, value_enum, default_value_t = Recovery::Reissue)]
    pub recovery: Recovery,
    /// If NAME's device is waiting for recovery, re-attach to it (with its
    /// recorded table and options) instead of failing: what the systemd
    /// unit does after a crash.
    #[arg(long)]
    pub or_recover: bool,
    /// Internal: serve by re-attaching to NAME's waiting device.
    #[arg(long, hide = true)]
    pub recover: bool,
    /// Stay in the foreground instead of detaching the server.
    #[arg(long)]
    pub foreground: bool,
    /// Seconds a request to an NBD export may wait for its answer,
    /// reconnects included, before it fails with EIO.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub nbd_timeout: u64,
    /// Copy mode with the kernel's batched fetch and commit
    /// (UBLK_F_BATCH_IO, Linux 7.0+).
    #[arg(long)]
    pub batch_io: bool,
    /// Server threads per queue, each with its own io_uring and a share of
    /// the queue's tags (UBLK_F_PER_IO_DAEMON, Linux 6.16+).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub io_threads: u16,
    /// The block device's I/O scheduler, set once it is live: `none` (the
    /// server does its own queueing; what measured best), another name
    /// from /sys/block/ublkbN/queue/scheduler (one the kernel refuses
    /// fails the create), or `kernel` to keep the kernel's choice
    /// (mq-deadline for one queue).
    #[arg(long, value_name = "NAME", default_value = "none", value_parser = parse_scheduler)]
    pub scheduler: String,
}

fn parse_scheduler(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err("a scheduler name: lowercase letters, digits, - and _".into())
    }
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err("must be 512 or 4096".into()),
    }
}
