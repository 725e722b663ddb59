//! The command surface, read from the binary's own help, and a runner that
//! records each run's output for the sweep and what it exercised, so a
//! command, action or credential flag added later without a run in the
//! sweep fails it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::sweep::Sweep;
use crate::support::CAPSULE;

/// The output of one run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self:#?}"))
    }
}

/// What `capsule --help` and each subcommand's `--help` list: the
/// subcommands, their actions (`<--list|--describe|…>`) and their flags.
#[derive(Debug, Default)]
pub struct Surface {
    /// Subcommand → its actions (empty for a subcommand without any).
    pub commands: BTreeMap<String, Vec<String>>,
    /// Every long flag of every subcommand.
    pub flags: BTreeSet<String>,
}

/// Runs `capsule`, with `RUST_LOG=trace`, a clean environment and its own
/// scratch directory, and records stdout and stderr in the sweep.
pub struct Cli<'a> {
    sweep: &'a Sweep,
    dir: PathBuf,
    surface: Surface,
    /// (subcommand, action or `-`, `human`|`json`) run so far.
    exercised: Mutex<BTreeSet<(String, String, String)>>,
    /// Long flags given so far.
    flags: Mutex<BTreeSet<String>>,
}

/// Variables of the caller that could change what a run does.
const SCRUBBED: [&str; 16] = [
    "RUST_LOG",
    "REDIS_URL",
    "CNVRG_REDIS_PASSWORD",
    "ELASTICSEARCH_URL",
    "ES_USERNAME",
    "ES_PASSWORD",
    "CNVRG_ES_USER",
    "CNVRG_ES_PASS",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "KUBERNETES_SERVICE_HOST",
    "KUBECONFIG",
];

impl<'a> Cli<'a> {
    /// Reads the command surface from the binary's help (`capsule --help`,
    /// `capsule help <subcommand>`), run with every secret of `help_env`
    /// in its environment and recorded too.
    pub fn new(sweep: &'a Sweep, dir: &Path, help_env: &[(String, String)]) -> Cli<'a> {
        let help_env: Vec<(&str, &str)> = help_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut cli = Cli {
            sweep,
            dir: dir.to_path_buf(),
            surface: Surface::default(),
            exercised: Mutex::default(),
            flags: Mutex::default(),
        };
        let top = cli.run(&["--help"], &help_env, 0).stdout;
        let names = subcommands(&top);
        for name in &names {
            cli.surface.commands.insert(name.clone(), Vec::new());
        }
        for name in names {
            let help = cli.run(&["help", &name], &help_env, 0).stdout;
            cli.surface.flags.extend(long_flags(&help));
            cli.surface.commands.insert(name, actions(&help));
        }
        cli.surface.flags.extend(long_flags(&top));
        assert!(
            cli.surface.commands.len() >= 5 && cli.surface.commands["pg"].len() >= 6,
            "the help could not be read: {:?}\n{top}",
            cli.surface
        );
        cli
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `--download` writes.
    pub fn dumpdir(&self) -> PathBuf {
        self.dir.join("dumps")
    }

    /// Runs `capsule <args>` with `env`; panics unless it exits with `code`.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)], code: i32) -> Run {
        let mut cmd = Command::new(CAPSULE);
        cmd.args(args).current_dir(&self.dir);
        for (k, _) in std::env::vars() {
            if k.starts_with("CNVRG_CAPSULE_") || SCRUBBED.contains(&k.as_str()) {
                cmd.env_remove(k);
            }
        }
        let dumpdir = self.dumpdir();
        cmd.env("RUST_LOG", "trace")
            .env("NO_COLOR", "1")
            .env("CAPSULE_HOME", self.dir.join("home"))
            .env("CNVRG_CAPSULE_DUMPDIR", &dumpdir)
            .envs(env.iter().copied());
        let out = cmd.output().expect("run capsule");
        // Lossy decoding keeps every ASCII byte, so every marker.
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let label = self.note(args);
        self.sweep.record(format!("`{label}` stdout"), &run.stdout);
        self.sweep.record(format!("`{label}` stderr"), &run.stderr);
        assert_eq!(run.code, code, "`{label}`: expected exit {code}:\n{run:#?}");
        run
    }

    /// Runs and expects success.
    pub fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.run(args, env, 0)
    }

    /// Notes what `args` exercise (a daemon started elsewhere too) and
    /// returns a label for it without any value: the subcommand, its
    /// flags and the form.
    pub fn note(&self, args: &[&str]) -> String {
        let command = args
            .iter()
            .find(|a| self.surface.commands.contains_key(**a))
            .copied()
            .unwrap_or("-");
        let flags: Vec<&str> = args
            .iter()
            .filter(|a| a.starts_with("--"))
            .map(|a| a.split('=').next().unwrap_or(a))
            .collect();
        let action = self
            .surface
            .commands
            .get(command)
            .and_then(|actions| flags.iter().find(|f| actions.iter().any(|a| a == *f)))
            .copied()
            .unwrap_or("-");
        let json =
            flags.contains(&"--json") || args.windows(2).any(|w| w == ["--log-format", "json"]);
        let form = if json { "json" } else { "human" };
        self.exercised
            .lock()
            .unwrap()
            .insert((command.into(), action.into(), form.into()));
        self.flags
            .lock()
            .unwrap()
            .extend(flags.iter().map(|f| f.to_string()));
        format!("capsule {command} {}", flags.join(" "))
    }

    /// Panics unless every subcommand and every action was run in both
    /// forms, and every flag that can carry a secret was given (or is in
    /// `unexercised`, with the reason).
    pub fn assert_complete(&self, secret_words: &[&str], unexercised: &[(&str, &str)]) {
        let mut wanted = BTreeSet::new();
        for (command, actions) in &self.surface.commands {
            let actions = if actions.is_empty() {
                vec!["-".to_string()]
            } else {
                actions.clone()
            };
            for action in actions {
                for form in ["human", "json"] {
                    wanted.insert((command.clone(), action.clone(), form.to_string()));
                }
            }
        }
        let exercised = self.exercised.lock().unwrap();
        let missing: Vec<_> = wanted.difference(&exercised).collect();
        assert!(
            missing.is_empty(),
            "the sweep does not run these (subcommand, action, form): {missing:?}"
        );
        let given = self.flags.lock().unwrap();
        let skipped: BTreeSet<&str> = unexercised.iter().map(|(f, _)| *f).collect();
        let missing: Vec<&String> = self
            .surface
            .flags
            .iter()
            .filter(|f| secret_words.iter().any(|w| f.contains(w)))
            .filter(|f| !given.contains(*f) && !skipped.contains(f.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "flags that can carry a secret, never given to the sweep: {missing:?}"
        );
        let stale: Vec<&&str> = skipped
            .iter()
            .filter(|f| given.contains(**f) || !self.surface.flags.contains(**f))
            .collect();
        assert!(stale.is_empty(), "stale entries of unexercised: {stale:?}");
    }
}

/// The subcommands listed under `Commands:`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The required action group of the usage line: `<--list|--describe|…>`.
fn actions(help: &str) -> Vec<String> {
    help.lines()
        .find(|l| l.starts_with("Usage:"))
        .and_then(|l| l.split_once("<--"))
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(group, _)| {
            format!("--{group}")
                .split('|')
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The long flags an option line starts with (`  -y, --yes`, `      --store <URL>`).
fn long_flags(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")))
        .map(|w| {
            w.split(['[', '<', '=', ','])
                .next()
                .unwrap_or(w)
                .to_string()
        })
        .collect()
}
