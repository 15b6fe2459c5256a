use std::fs;
use std::os::unix::fs::PermissionsExt;

use rdm_targets::{Table, TableErrorKind};
use rdm_ublk_server::backing::{check_table, inspect, open, BackingError, BackingKind};

#[test]
fn inspects_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    fs::write(&a, vec![0u8; 8192]).unwrap();
    let i = inspect(&a).unwrap();
    assert_eq!(i.kind, BackingKind::File);
    assert_eq!(i.info.size_bytes, 8192);
    assert!(!i.info.read_only);
    // A hard link is the same object.
    let b = dir.path().join("b");
    fs::hard_link(&a, &b).unwrap();
    assert_eq!(inspect(&b).unwrap().info.identity, i.info.identity);
    fs::set_permissions(&a, fs::Permissions::from_mode(0o444)).unwrap();
    assert!(inspect(&a).unwrap().info.read_only);
}

#[test]
fn missing_and_wrong_type_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = inspect(&missing).unwrap_err();
    assert!(matches!(e, BackingError::Io { .. }));
    assert!(e.to_string().contains("nope"), "{e}");
    let e = inspect(dir.path()).unwrap_err();
    assert!(matches!(e, BackingError::WrongType { .. }));
    assert!(inspect(std::path::Path::new("/dev/null")).is_err());
}

#[test]
fn checks_a_table_against_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    fs::write(&a, vec![0u8; 100 * 512]).unwrap();
    let ok = Table::parse(&format!("0 100 linear {} 0", a.display())).unwrap();
    check_table(&ok, true).unwrap();
    let small = Table::parse(&format!("0 101 linear {} 0", a.display())).unwrap();
    match check_table(&small, true).unwrap_err() {
        BackingError::Table(e) => assert!(matches!(e.kind, TableErrorKind::DeviceTooSmall { .. })),
        e => panic!("{e}"),
    }
    let link = dir.path().join("b");
    fs::hard_link(&a, &link).unwrap();
    let twice = Table::parse(&format!(
        "0 50 linear {} 0\n50 50 linear {} 25",
        a.display(),
        link.display()
    ))
    .unwrap();
    assert!(check_table(&twice, true).is_err());
    check_table(&twice, false).unwrap();
}

#[test]
fn open_prefers_o_direct() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    fs::write(&a, vec![0u8; 4096]).unwrap();
    let (f, direct) = open(&a, true).unwrap();
    let flags = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_GETFL) };
    assert_eq!(direct, flags & libc::O_DIRECT != 0);
    let e = open(&dir.path().join("missing"), true).unwrap_err();
    assert!(e.to_string().contains("missing"));
}
