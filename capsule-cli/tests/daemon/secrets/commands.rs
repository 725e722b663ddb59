//! The CLI runs of the sweep: every action of every engine, human and
//! `--json`, working and failing, with the store named each way capsule
//! accepts (flags, URL options, URL user info, legacy flags, environment).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::surface::{Cli, Run};

/// The cluster the CLI's backups are recorded under (no daemon serves it,
/// so queued requests stay queued).
pub const CLI_CLUSTER: &str = "sweep-cli";

/// One way of naming the store: global flags and environment.
#[derive(Clone, Debug, Default)]
pub struct StoreForm {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Runs commands against the bucket, naming the store a different way
/// each time.
pub struct Runner<'a> {
    pub cli: &'a Cli<'a>,
    forms: Vec<StoreForm>,
    next: AtomicUsize,
}

impl<'a> Runner<'a> {
    pub fn new(cli: &'a Cli<'a>, forms: Vec<StoreForm>) -> Runner<'a> {
        Runner {
            cli,
            forms,
            next: AtomicUsize::new(0),
        }
    }

    /// `capsule <store> <args>` with `env`, expecting exit `code`.
    pub fn run(&self, args: &[&str], env: &[(String, String)], code: i32) -> Run {
        let form = &self.forms[self.next.fetch_add(1, Ordering::Relaxed) % self.forms.len()];
        self.run_with(form, args, env, code)
    }

    /// As [`Runner::run`], with the store named by `form`.
    pub fn run_with(
        &self,
        form: &StoreForm,
        args: &[&str],
        env: &[(String, String)],
        code: i32,
    ) -> Run {
        let all: Vec<&str> = form
            .args
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect();
        let env: Vec<(&str, &str)> = form
            .env
            .iter()
            .chain(env)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.cli.run(&all, &env, code)
    }

    pub fn ok(&self, args: &[&str]) -> Run {
        self.run(args, &[], 0)
    }
}

/// Connection settings of one engine, and the ways to get them wrong.
pub struct EngineCase {
    /// `pg`, `redis` or `es`.
    pub command: &'static str,
    /// The flag taking the URL.
    pub url_flag: &'static str,
    /// The URL, password in it.
    pub url: String,
    /// The same connection given another way (flags and environment).
    pub other: (Vec<String>, Vec<(String, String)>),
    /// The URL with a wrong password.
    pub wrong: String,
    /// The URL, password in it, of a port nothing listens on.
    pub unreachable: String,
    /// A URL with a password that does not parse: a usage error.
    pub malformed: String,
    /// Extra flags of the human and the JSON `--restore`.
    pub restore: [Vec<String>; 2],
    /// Extra flags of the JSON `--verify`.
    pub verify: Vec<String>,
}

/// The age files of the sweep.
pub struct Keys {
    /// Identity files: every key the sweep encrypts to, and a wrong one.
    pub identity: String,
    pub wrong_identity: String,
    /// A recipients file (public keys).
    pub recipients: String,
    /// A secret key, quoted, given where a public key belongs.
    pub pasted: String,
}

fn id_of(run: &Run) -> String {
    let id = run.stdout.trim().to_string();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "{run:#?}"
    );
    id
}

fn json_id(run: &Run) -> String {
    run.json()["backupId"]
        .as_str()
        .unwrap_or_else(|| panic!("no backupId: {run:#?}"))
        .to_string()
}

/// `parts` joined into one argument list.
fn join(parts: &[&[&str]]) -> Vec<String> {
    parts.concat().into_iter().map(str::to_string).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every action of engine `e`, human and `--json`, then the failures.
pub fn engine(r: &Runner, e: &EngineCase, keys: &Keys) {
    let cmd = e.command;
    let run =
        |args: Vec<String>, env: &[(String, String)], code: i32| r.run(&strs(&args), env, code);
    let url = [e.url_flag, e.url.as_str()];
    let (other, other_env) = (strs(&e.other.0), &e.other.1);
    let identity = ["--identity-file", keys.identity.as_str()];
    let create = [cmd, "--create", "--cluster", CLI_CLUSTER];

    // Backups now: plain (human), and encrypted to the recipients file
    // with the credentials given the other way (JSON).
    let first = run(join(&[&create, &url]), &[], 0);
    // Redaction masks secrets, not facts: the logged key count of a Redis
    // capture (a field once named `key_count`, caught by the `*key*=`
    // rule for URL options) stays readable.
    if cmd == "redis" {
        let logged = first.stderr.split("dbsize=").nth(1).unwrap_or_default();
        assert!(
            logged.starts_with(|c: char| c.is_ascii_digit()),
            "the capture's key count is not logged readably:\n{}",
            first.stderr
        );
    }
    let plain = id_of(&first);
    let to = ["--json", "--encryption-key-file", keys.recipients.as_str()];
    let encrypted = json_id(&run(join(&[&create, &to, &other]), other_env, 0));
    // Queued requests (no connection settings).
    let queued = id_of(&run(join(&[&create]), &[], 0));
    let queued_json = json_id(&run(join(&[&create, &["--json"]]), &[], 0));

    r.ok(&[cmd, "--list"]);
    r.ok(&[cmd, "--list", "--json"]);
    r.ok(&[cmd, "--describe", "--id", &plain]);
    r.ok(&[cmd, "--describe", "--id", &encrypted, "--json"]);

    run(join(&[&[cmd, "--verify", "--id", &plain], &url]), &[], 0);
    let verify = [cmd, "--verify", "--id", &encrypted, "--json"];
    run(
        join(&[&verify, &identity, &other, &strs(&e.verify)]),
        other_env,
        0,
    );

    let restore = [cmd, "--restore", "--id", &plain, "--yes"];
    run(join(&[&restore, &url, &strs(&e.restore[0])]), &[], 0);
    let restore = [cmd, "--restore", "--id", &encrypted, "--yes", "--json"];
    run(
        join(&[&restore, &identity, &other, &strs(&e.restore[1])]),
        other_env,
        0,
    );
    // Queued restores.
    r.ok(&[cmd, "--restore", "--id", &plain, "--yes"]);
    r.ok(&[cmd, "--restore", "--id", &plain, "--yes", "--json"]);

    r.ok(&[cmd, "--download", "--id", &plain]);
    run(
        join(&[
            &[cmd, "--download", "--id", &encrypted, "--json"],
            &identity,
        ]),
        &[],
        0,
    );

    r.ok(&[cmd, "--delete", "--id", &queued, "--yes"]);
    r.ok(&[cmd, "--delete", "--id", &queued_json, "--yes", "--json"]);

    // Failures, where secrets leak most: a wrong password, the wrong
    // identity, a server that is not there, a URL that does not parse, a
    // secret key given as a recipient.
    let wrong_identity = ["--identity-file", keys.wrong_identity.as_str()];
    for json in [&[][..], &["--json"]] {
        run(join(&[&create, &[e.url_flag, &e.wrong], json]), &[], 1);
        let download = [cmd, "--download", "--id", &encrypted];
        run(join(&[&download, &wrong_identity, json]), &[], 1);
    }
    run(join(&[&create, &[e.url_flag, &e.unreachable]]), &[], 1);
    run(join(&[&create, &[e.url_flag, &e.malformed]]), &[], 2);
    run(
        join(&[&create, &url, &["--encrypt-to", &keys.pasted]]),
        &[],
        2,
    );
}

/// What the commands beside the engines' need.
pub struct Globals {
    /// Every secret in the variable capsule reads it from.
    pub secret_env: Vec<(String, String)>,
    /// The fake cluster's kubeconfig, and one naming a port nothing listens on.
    pub kubeconfig: String,
    pub unreachable_kubeconfig: String,
    /// A `--config` file (with a password in a `url`) and its `url_env` variables.
    pub config: String,
    pub config_env: Vec<(String, String)>,
    /// A `--config` file whose URL, password in it, does not parse.
    pub bad_config: String,
    pub cluster: String,
    /// The store with a wrong secret key, and one nothing listens on.
    pub wrong_key: StoreForm,
    pub unreachable: StoreForm,
    /// An Azure account key and a GCP service account key (JSON).
    pub azure_key: String,
    pub gcp_key: String,
    /// The legacy fixture's backups, and one whose statefile is cut short.
    pub legacy_ids: Vec<String>,
    pub truncated_id: String,
}

/// `version`, `completion`, `help`, `plan`, failing `start`, the legacy
/// backups (their statefiles hold credentials) and the store failures (a
/// wrong key, an unreachable endpoint, Azure and GCP credentials that
/// cannot work here).
pub fn global(r: &Runner, g: &Globals) {
    let env: Vec<(&str, &str)> = g
        .secret_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for json in [&[][..], &["--json"]] {
        r.cli.ok(&[json, &["version"]].concat(), &env);
        r.cli.ok(&[json, &["completion", "bash"]].concat(), &env);
        r.cli.ok(&[json, &["help", "pg"]].concat(), &env);

        for id in &g.legacy_ids {
            r.ok(&[json, &["pg", "--describe", "--id", id]].concat());
        }
        r.run(
            &[json, &["pg", "--describe", "--id", &g.truncated_id]].concat(),
            &[],
            1,
        );

        let plan = ["--kubeconfig", &g.kubeconfig, "plan", "--config", &g.config];
        let run = r.run(
            &[json, &plan, &["--cluster", &g.cluster]].concat(),
            &g.config_env,
            0,
        );
        assert!(run.stdout.contains("sweep/pg-storage"), "{run:#?}");

        r.run_with(&g.wrong_key, &[json, &["pg", "--list"]].concat(), &[], 1);
        let azure = [
            "--bucket-type",
            "azure",
            "--account-name",
            "sweepacct",
            "--account-key",
            &g.azure_key,
            "--bucket-name",
            "sweep",
            "--endpoint",
            "http://127.0.0.1:1",
        ];
        r.cli
            .run(&[json, &azure, &["redis", "--list"]].concat(), &[], 1);
    }
    r.run(&["--kubeconfig", &g.unreachable_kubeconfig, "plan"], &[], 1);
    r.run(&["start", "--config", &g.bad_config], &g.config_env, 2);
    r.run_with(&g.unreachable, &["es", "--list"], &[], 1);
    let gcp = [
        "--bucket-type",
        "gcp",
        "--bucket-name",
        "sweep",
        "--key-json",
        &g.gcp_key,
    ];
    r.cli.run(&[&gcp[..], &["es", "--list"]].concat(), &[], 2);
}
