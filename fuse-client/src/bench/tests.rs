//! The bench run for real with tiny sizes against temp directories on the local disk.
use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use tempfile::TempDir;

/// A small tree to copy: two files (one in a sub-directory, one read-only) and a symlink.
fn copy_source() -> TempDir {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("tree");
    fs::create_dir_all(top.join("sub")).unwrap();
    fs::write(top.join("a.h"), b"#define A 1\n").unwrap();
    fs::write(top.join("sub/b.h"), vec![7u8; 10_000]).unwrap();
    fs::set_permissions(top.join("sub/b.h"), fs::Permissions::from_mode(0o444)).unwrap();
    std::os::unix::fs::symlink("a.h", top.join("link.h")).unwrap();
    src
}

/// `--files 20 --data-mib 8`, the copy source `src/tree`, and no global cache drop: tests
/// must not empty the caches of the machine they run on.
fn tiny(src: &TempDir) -> Options {
    Options {
        files: 20,
        data_mib: 8,
        copy_src: src.path().join("tree"),
        drop_caches: false,
        ..Options::default()
    }
}

/// The entries left in `dir`.
fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn every_row_is_measured_and_the_directory_is_removed() {
    let src = copy_source();
    let target = tempfile::tempdir().unwrap();
    let report = run(target.path(), &tiny(&src)).unwrap();

    let ids: Vec<&str> = report.rows.iter().map(|r| r.id.as_str()).collect();
    let all: Vec<&str> = ROWS.iter().map(|s| s.id).collect();
    assert_eq!(ids, all);
    for row in &report.rows {
        assert!(
            row.value.is_finite() && row.value > 0.0,
            "row {} measured {}",
            row.id,
            row.value
        );
        assert!(row.count > 0, "row {} counted nothing", row.id);
    }
    let copy = &report.rows[0];
    assert_eq!(copy.count, 2, "{copy:?}");
    assert!(
        copy.note.contains("2 files, 2 dirs, 1 symlinks"),
        "{copy:?}"
    );
    assert_eq!(report.rows[1].count, 20);
    assert_eq!(
        report.rows[2].count, 20,
        "create-par: 20 files over 8 threads"
    );
    let seq_write = report.rows.iter().find(|r| r.id == "seq-write").unwrap();
    assert_eq!(seq_write.count, 8);
    let par_write = report.rows.iter().find(|r| r.id == "par-write").unwrap();
    assert_eq!(par_write.count, 8);
    assert!(
        entries(target.path()).is_empty(),
        "{:?}",
        entries(target.path())
    );
}

#[test]
fn json_output_parses_back_to_the_report() {
    let src = copy_source();
    let target = tempfile::tempdir().unwrap();
    let opts = Options {
        skip_data: true,
        ..tiny(&src)
    };
    let report = run(target.path(), &opts).unwrap();
    let json = report.json().unwrap();

    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["files"], 20);
    assert_eq!(value["rows"].as_array().unwrap().len(), 9);
    assert_eq!(value["rows"][1]["id"], "create");
    assert_eq!(value["rows"][1]["unit"], "files/s");
    // Floats come back to within a rounding of their last digit.
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back.rows.len(), report.rows.len());
    for (b, r) in back.rows.iter().zip(&report.rows) {
        assert_eq!(
            (&b.id, &b.unit, b.count, &b.note),
            (&r.id, &r.unit, r.count, &r.note)
        );
        assert!(
            (b.value - r.value).abs() <= r.value * 1e-12,
            "{b:?} vs {r:?}"
        );
    }
}

#[test]
fn a_row_runs_alone_and_makes_what_it_needs_untimed() {
    let src = copy_source();
    let target = tempfile::tempdir().unwrap();
    let opts = Options {
        rows: vec![
            "rmdir".into(),
            "stat".into(),
            "seq-read".into(),
            "rand-read".into(),
        ],
        ..tiny(&src)
    };
    let report = run(target.path(), &opts).unwrap();
    // Run order, not the order given.
    let ids: Vec<&str> = report.rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["stat", "rmdir", "seq-read", "rand-read"]);
    assert!(report.rows.iter().all(|r| r.value > 0.0));
    assert!(entries(target.path()).is_empty());
}

#[test]
fn the_skip_flags_leave_rows_out() {
    let src = copy_source();
    let opts = Options {
        skip_copy: true,
        skip_data: true,
        ..tiny(&src)
    };
    let ids: Vec<&str> = selected(&opts).unwrap().iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        [
            "create",
            "create-par",
            "stat",
            "read-cold",
            "unlink",
            "mkdir",
            "rmdir",
            "rename-dir"
        ]
    );
}

#[test]
fn an_unknown_row_is_refused_with_the_list_of_rows() {
    let src = copy_source();
    let target = tempfile::tempdir().unwrap();
    let opts = Options {
        rows: vec!["stats".into()],
        ..tiny(&src)
    };
    let err = format!("{:#}", run(target.path(), &opts).unwrap_err());
    assert!(err.contains("unknown row \"stats\""), "{err}");
    assert!(err.contains("read-cold"), "{err}");
    assert!(entries(target.path()).is_empty());
}

#[test]
fn a_failing_row_names_the_operation_and_path_and_still_cleans_up() {
    let target = tempfile::tempdir().unwrap();
    let missing = target.path().join("no-such-tree");
    let opts = Options {
        files: 20,
        data_mib: 8,
        copy_src: missing.clone(),
        drop_caches: false,
        ..Options::default()
    };
    let err = format!("{:#}", run(target.path(), &opts).unwrap_err());
    assert!(err.contains("row copy"), "{err}");
    assert!(
        err.contains(&format!("lstat {}", missing.display())),
        "{err}"
    );
    assert!(
        entries(target.path()).is_empty(),
        "{:?}",
        entries(target.path())
    );
}

#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("absent");
    let err = format!("{:#}", run(&dir, &Options::default()).unwrap_err());
    assert!(err.contains(&format!("mkdir {}", dir.display())), "{err}");
}

#[test]
fn the_copy_keeps_content_modes_and_symlinks() {
    let src = copy_source();
    let target = tempfile::tempdir().unwrap();
    let dest = target.path().join("tree");
    let mut tally = copy::Tally::default();
    copy::copy_tree(&src.path().join("tree"), &dest, &mut tally).unwrap();

    assert_eq!(fs::read(dest.join("a.h")).unwrap(), b"#define A 1\n");
    assert_eq!(fs::read(dest.join("sub/b.h")).unwrap(), vec![7u8; 10_000]);
    let mode = fs::metadata(dest.join("sub/b.h"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
    assert_eq!(
        fs::read_link(dest.join("link.h")).unwrap(),
        Path::new("a.h")
    );
    assert_eq!((tally.files, tally.dirs, tally.symlinks), (2, 2, 1));
}

#[test]
fn compare_prints_both_figures_and_their_ratio() {
    let row = |id: &str, value: f64, note: &str| Row {
        id: id.into(),
        label: format!("label of {id}"),
        value,
        unit: "ops/s".into(),
        count: 10,
        note: note.into(),
    };
    let report = |dir: &str, rows| Report {
        dir: dir.into(),
        files: 10,
        data_mib: 8,
        rows,
    };
    let a = report("/mnt", vec![row("stat", 500.0, ""), row("mkdir", 20.0, "")]);
    let b = report(
        "/tmp",
        vec![row("stat", 100_000.0, "warm"), row("unlink", 3.0, "")],
    );
    let out = compare_table(("cairn", "local"), &a, &b);

    let stat = out.lines().find(|l| l.starts_with("stat ")).unwrap();
    assert!(
        stat.contains(" 500 ") && stat.contains("100000") && stat.ends_with("0.00500"),
        "{out}"
    );
    let mkdir = out.lines().find(|l| l.starts_with("mkdir ")).unwrap();
    assert!(mkdir.trim_end().ends_with('-'), "{out}");
    assert!(out.lines().any(|l| l.starts_with("unlink ")), "{out}");
    assert!(out.contains("note local stat: warm"), "{out}");
}
