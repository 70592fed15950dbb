//! Server settings from a TOML file (`--config <file>`) under the command line.
//!
//! A server's settings are one clap struct; the file uses the same keys as its long flags
//! (`heartbeat-timeout = "5s"`, `peers = ["1=host1:7001", …]`; `snake_case` is accepted too),
//! and every value is parsed by the flag's own parser, so a key means exactly what its flag
//! means, `--help` documents both, and there is no second schema to drift. Precedence, highest
//! first: flags, environment variables, the file, defaults. An unknown key, a hidden (test)
//! flag, or a value of the wrong shape is refused with the file and key named, so a typo never
//! silently leaves a default in place.
//!
//! How: the command line is parsed once with every argument optional, only to find `--config`
//! and which arguments the user set (clap's `value_source`); the file's other keys become
//! arguments placed before the user's, and the whole line is parsed again — the second parse
//! applies requirements, parsers and defaults as if everything had been typed.
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, Parser};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The long flag (and key) that names the file.
pub const CONFIG_FLAG: &str = "config";

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A bad command line, `--help` or `--version`: clap prints it and picks the exit code.
    #[error(transparent)]
    Args(#[from] clap::Error),
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

impl ConfigError {
    /// Prints the error the way the command line's own errors print and exits (2 for bad
    /// settings, 0 for `--help` / `--version`).
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Args(e) => e.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(2)
            }
        }
    }
}

/// Parses `C` from the process's arguments and the file named by its `--config`.
pub fn parse<C: Parser>() -> Result<C, ConfigError> {
    parse_from::<C>(std::env::args_os())
}

/// Parses `C` from `args` (the first is the program name) and the file named by `--config`.
/// `C` must have a `config: Option<PathBuf>` argument named [`CONFIG_FLAG`].
pub fn parse_from<C: Parser>(
    args: impl IntoIterator<Item = impl Into<OsString>>,
) -> Result<C, ConfigError> {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // First pass: nothing required, so a required flag may come from the file.
    let probe = C::command()
        .mut_args(|a| a.required(false))
        .try_get_matches_from(&args)?;
    let Some(path) = probe.get_one::<PathBuf>(CONFIG_FLAG).cloned() else {
        return Ok(C::try_parse_from(args)?);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let from_file = file_args::<C>(&path, &text, |id| {
        matches!(
            probe.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    })?;
    let mut line = Vec::with_capacity(args.len() + from_file.len());
    line.extend(args.first().cloned());
    line.extend(from_file);
    line.extend(args.into_iter().skip(1));
    Ok(C::try_parse_from(line)?)
}

/// The file's settings as command-line arguments, leaving out those `set_by_user` says the
/// command line or the environment already gave.
fn file_args<C: CommandFactory>(
    path: &Path,
    text: &str,
    set_by_user: impl Fn(&str) -> bool,
) -> Result<Vec<OsString>, ConfigError> {
    let bad = |message: String| ConfigError::File {
        path: path.to_path_buf(),
        message,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    let cmd = C::command();
    let mut out = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()) && !a.is_hide_set())
            .filter(|a| a.get_long() != Some(CONFIG_FLAG))
            .ok_or_else(|| {
                let known: Vec<&str> = cmd
                    .get_arguments()
                    .filter(|a| !a.is_hide_set())
                    .filter_map(|a| a.get_long())
                    .filter(|l| !matches!(*l, CONFIG_FLAG | "help" | "version"))
                    .collect();
                bad(format!(
                    "unknown key `{key}` (the keys are the long flags: {})",
                    known.join(", ")
                ))
            })?;
        if set_by_user(arg.get_id().as_str()) {
            continue;
        }
        // `--key=value`: a value that starts with `-` stays a value.
        let long = format!("--{flag}");
        let with = |v: OsString| {
            let mut a = OsString::from(format!("{long}="));
            a.push(v);
            a
        };
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
        match value {
            toml::Value::Boolean(b) if is_switch => {
                if *b {
                    out.push(long.into());
                }
            }
            _ if is_switch => {
                return Err(bad(format!("`{key}` is a switch: write true or false")));
            }
            toml::Value::Array(items) => {
                for item in items {
                    out.push(with(scalar(item).ok_or_else(|| {
                        bad(format!("`{key}`: list items must be strings or numbers"))
                    })?));
                }
            }
            v => out.push(with(scalar(v).ok_or_else(|| {
                bad(format!(
                    "`{key}` must be a string or a number (durations and sizes \
                     are strings with units, like \"5s\" or \"64MiB\")"
                ))
            })?)),
        }
    }
    Ok(out)
}

fn scalar(v: &toml::Value) -> Option<OsString> {
    match v {
        toml::Value::String(s) => Some(s.into()),
        toml::Value::Integer(i) => Some(i.to_string().into()),
        toml::Value::Float(f) => Some(f.to_string().into()),
        _ => None,
    }
}

/// Checks an example settings file as shipped in `packaging/config/`: it parses, and the
/// defaults its comments show (`# key = value` lines) are the real ones: uncommented, they
/// change nothing. Returns the settings it makes. For the servers' tests.
pub fn check_example<C: Parser + std::fmt::Debug>(example: &Path) -> Result<C, String> {
    let parse = |path: &Path| {
        parse_from::<C>(["example".as_ref(), "--config".as_ref(), path.as_os_str()])
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let shipped = parse(example)?;
    let text = std::fs::read_to_string(example).map_err(|e| e.to_string())?;
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(kv) if kv.contains(" = ") => kv,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if uncommented == text {
        return Err("the example shows no defaults in `# key = value` comments".into());
    }
    let tmp = std::env::temp_dir().join(format!(
        "cairn-example-{}-{}.toml",
        std::process::id(),
        crate::time::unix_ms()
    ));
    std::fs::write(&tmp, uncommented).map_err(|e| e.to_string())?;
    let defaults = parse(&tmp);
    let _ = std::fs::remove_file(&tmp);
    let (a, b) = (format!("{shipped:?}"), format!("{:?}", defaults?));
    let b = b.replace(&*tmp.to_string_lossy(), &example.to_string_lossy());
    if a != b {
        return Err(format!(
            "a default shown in the comments differs from the real one:\n{a}\n{b}"
        ));
    }
    Ok(shipped)
}

/// A duration with its unit (`250ms`, `5s`, `10m`, `24h`, `1h 30m`), for flags and files.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{s:?} is not a duration with a unit, like 500ms, 5s, 10m or 24h ({e})")
    })
}

/// A size with its unit (`512`, `64KiB`, `64MiB`, `10GB`: a bare number is bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size, like 64MiB or 10GiB ({e})"))
}

/// A byte rate (`100MiB/s`, or a size meaning per second; `0` or `unlimited` is no limit,
/// returned as 0).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    parse_size(t.strip_suffix("/s").unwrap_or(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A server's settings in miniature: required, defaulted, list, switch, unit-typed.
    #[derive(Parser, Debug)]
    #[command(name = "demo")]
    struct Demo {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        id: u64,
        #[arg(long, env = "CAIRN_DEMO_LISTEN", default_value = "127.0.0.1:1")]
        listen: String,
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        heartbeat_timeout: Duration,
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        reserve: u64,
        #[arg(long, value_delimiter = ',')]
        peers: Vec<String>,
        #[arg(long)]
        no_lease_reads: bool,
        #[arg(long, hide = true)]
        test_hook: Option<u64>,
    }

    fn with_file(text: &str, args: &[&str]) -> Result<Demo, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.toml");
        std::fs::write(&path, text).unwrap();
        let mut line = vec![
            "demo".to_string(),
            "--config".into(),
            path.display().to_string(),
        ];
        line.extend(args.iter().map(|s| s.to_string()));
        parse_from::<Demo>(line)
    }

    #[test]
    fn the_file_fills_what_the_flags_leave_and_flags_win() {
        let d = with_file(
            "id = 7\nheartbeat-timeout = \"1m 30s\"\nreserve = \"1GiB\"\n\
             peers = [\"1=a:1\", \"2=b:2\"]\nno_lease_reads = true\nlisten = \"0.0.0.0:9\"\n",
            &["--listen", "127.0.0.1:5"],
        )
        .unwrap();
        assert_eq!(d.id, 7, "a required flag may come from the file");
        assert_eq!(d.heartbeat_timeout, Duration::from_secs(90));
        assert_eq!(d.reserve, 1 << 30);
        assert_eq!(d.peers, ["1=a:1", "2=b:2"]);
        assert!(d.no_lease_reads, "snake_case keys name the same flags");
        assert_eq!(d.listen, "127.0.0.1:5", "the flag wins over the file");
        let d = with_file("id = 1\n", &[]).unwrap();
        assert_eq!(d.heartbeat_timeout, Duration::from_secs(5), "defaults stay");
        assert_eq!(d.reserve, 64 << 20);
    }

    #[test]
    fn mistakes_in_the_file_are_refused_with_the_key_named() {
        let unknown = with_file("id = 1\nheartbeat-timout = \"5s\"\n", &[]).unwrap_err();
        assert!(
            unknown
                .to_string()
                .contains("unknown key `heartbeat-timout`")
                && unknown.to_string().contains("heartbeat-timeout"),
            "{unknown}"
        );
        let hidden = with_file("id = 1\ntest-hook = 3\n", &[]).unwrap_err();
        assert!(hidden.to_string().contains("unknown key"), "{hidden}");
        let unitless = with_file("id = 1\nheartbeat-timeout = 5\n", &[]).unwrap_err();
        assert!(
            matches!(unitless, ConfigError::Args(_)),
            "a bare number is no duration: {unitless}"
        );
        assert!(
            unitless.to_string().contains("not a duration"),
            "{unitless}"
        );
        let table = with_file("id = 1\n[listen]\nx = 1\n", &[]).unwrap_err();
        assert!(table.to_string().contains("`listen`"), "{table}");
        let switch = with_file("id = 1\nno-lease-reads = \"yes\"\n", &[]).unwrap_err();
        assert!(switch.to_string().contains("switch"), "{switch}");
        let syntax = with_file("id = \n", &[]).unwrap_err();
        assert!(matches!(syntax, ConfigError::File { .. }), "{syntax}");
        let missing = parse_from::<Demo>(["demo", "--config", "/nonexistent/demo.toml"]);
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
        let required = with_file("listen = \"a:1\"\n", &[]).unwrap_err();
        assert!(required.to_string().contains("--id"), "{required}");
    }

    #[test]
    fn without_a_file_the_command_line_alone_counts() {
        let d = parse_from::<Demo>(["demo", "--id", "3", "--reserve", "512"]).unwrap();
        assert_eq!((d.id, d.reserve), (3, 512));
        assert!(
            parse_from::<Demo>(["demo"]).is_err(),
            "--id is still required"
        );
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        #[derive(Parser, Debug)]
        struct EnvDemo {
            #[arg(long)]
            config: Option<PathBuf>,
            #[arg(long, env = "CAIRN_CONFIG_FILE_TEST_RESERVE", value_parser = parse_size)]
            reserve: Option<u64>,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.toml");
        std::fs::write(&path, "reserve = \"1KiB\"\n").unwrap();
        let parse = || {
            parse_from::<EnvDemo>(["demo".as_ref(), "--config".as_ref(), path.as_os_str()])
                .unwrap()
                .reserve
        };
        assert_eq!(parse(), Some(1024));
        std::env::set_var("CAIRN_CONFIG_FILE_TEST_RESERVE", "2KiB");
        assert_eq!(parse(), Some(2048));
        std::env::remove_var("CAIRN_CONFIG_FILE_TEST_RESERVE");
    }

    #[test]
    fn units_read_as_people_write_them() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("10").is_err());
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64 KiB"), Ok(64 << 10));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_rate("100MiB/s"), Ok(100 << 20));
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("unlimited"), Ok(0));
    }
}
