//! The images `tests/e2e/images` makes for the test Kubernetes node run Strait the way the
//! released images do: entrypoint, user and exposed ports of `tests/e2e/images config NAME` equal
//! the final stage of `crates/<crate>/Dockerfile`, and the entrypoint is where that stage COPYs
//! the binary. No cargo build, containerd or network involved.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the final stage of a Dockerfile (or an image config) says about running the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Runtime {
    entrypoint: Vec<String>,
    user: Option<String>,
    /// `8080/tcp` style, as in an image config's `ExposedPorts`.
    exposed: BTreeSet<String>,
}

/// The final stage of `dockerfile`, and the destination of its COPY of `binary` (a source whose
/// file name is `binary`).
fn final_stage(dockerfile: &str, binary: &str) -> Result<(Runtime, String), String> {
    // Instructions, with `\` continuations joined and comments dropped.
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        instructions.push(current);
    }
    let split = |i: &String| -> (String, String) {
        let (word, rest) = i.split_once(char::is_whitespace).unwrap_or((i, ""));
        (word.to_ascii_uppercase(), rest.trim().to_string())
    };
    let last_from = instructions
        .iter()
        .rposition(|i| split(i).0 == "FROM")
        .ok_or("no FROM instruction")?;

    let mut runtime = Runtime {
        entrypoint: Vec::new(),
        user: None,
        exposed: BTreeSet::new(),
    };
    let mut copy_dest = None;
    for instruction in &instructions[last_from + 1..] {
        let (word, args) = split(instruction);
        match word.as_str() {
            "ENTRYPOINT" => {
                runtime.entrypoint = serde_json::from_str(&args).map_err(|e| {
                    format!("ENTRYPOINT {args} is not the exec form (a JSON array): {e}")
                })?;
            }
            "USER" => runtime.user = Some(args),
            "EXPOSE" => {
                for port in args.split_whitespace() {
                    runtime.exposed.insert(if port.contains('/') {
                        port.to_string()
                    } else {
                        format!("{port}/tcp")
                    });
                }
            }
            "COPY" => {
                let paths: Vec<&str> = args
                    .split_whitespace()
                    .filter(|a| !a.starts_with("--"))
                    .collect();
                let Some((dest, sources)) = paths.split_last() else {
                    return Err(format!("COPY {args} names no destination"));
                };
                if sources.iter().any(|s| s.rsplit('/').next() == Some(binary)) {
                    copy_dest = Some(if dest.ends_with('/') {
                        format!("{dest}{binary}")
                    } else {
                        dest.to_string()
                    });
                }
            }
            _ => {}
        }
    }
    let copy_dest = copy_dest.ok_or(format!("the final stage does not COPY {binary}"))?;
    Ok((runtime, copy_dest))
}

/// The runtime facts of an image config as `tests/e2e/images config` prints it.
fn image_runtime(config: &serde_json::Value) -> Result<Runtime, String> {
    let c = config
        .get("config")
        .ok_or(format!("no \"config\" object in {config}"))?;
    let strings = |v: &serde_json::Value| -> Option<Vec<String>> {
        v.as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    Ok(Runtime {
        entrypoint: c
            .get("Entrypoint")
            .and_then(strings)
            .ok_or(format!("no Entrypoint array in {c}"))?,
        user: c.get("User").and_then(|u| u.as_str()).map(str::to_string),
        exposed: c
            .get("ExposedPorts")
            .and_then(|p| p.as_object())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default(),
    })
}

/// Every way the image differs from the Dockerfile's final stage, as messages naming both sides.
fn mismatches(dockerfile: &str, binary: &str, config: &serde_json::Value) -> Vec<String> {
    let (docker, copy_dest) = match final_stage(dockerfile, binary) {
        Ok(parsed) => parsed,
        Err(e) => return vec![format!("Dockerfile: {e}")],
    };
    let image = match image_runtime(config) {
        Ok(image) => image,
        Err(e) => return vec![format!("image config: {e}")],
    };
    let mut found = Vec::new();
    if docker.entrypoint != image.entrypoint {
        found.push(format!(
            "ENTRYPOINT {:?} in the Dockerfile, Entrypoint {:?} in the image",
            docker.entrypoint, image.entrypoint
        ));
    }
    if docker.user != image.user {
        found.push(format!(
            "USER {:?} in the Dockerfile, User {:?} in the image",
            docker.user, image.user
        ));
    }
    if docker.exposed != image.exposed {
        found.push(format!(
            "EXPOSE {:?} in the Dockerfile, ExposedPorts {:?} in the image",
            docker.exposed, image.exposed
        ));
    }
    if image.entrypoint.first() != Some(&copy_dest) {
        found.push(format!(
            "the Dockerfile COPYs {binary} to {copy_dest}, the image's entrypoint is {:?}",
            image.entrypoint
        ));
    }
    found
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dockerfile(krate: &str) -> String {
    let path = repo_root().join("crates").join(krate).join("Dockerfile");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `tests/e2e/images config NAME`, parsed.
fn image_config(name: &str) -> serde_json::Value {
    let script = repo_root().join("tests/e2e/images");
    let out = Command::new(&script)
        .args(["config", name])
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "`tests/e2e/images config {name}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`tests/e2e/images config {name}` printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn assert_in_step(krate: &str, binary: &str) {
    let found = mismatches(&dockerfile(krate), binary, &image_config(binary));
    assert!(
        found.is_empty(),
        "crates/{krate}/Dockerfile and the {binary} image of tests/e2e/images differ \
         (change image_facts in tests/e2e/lib/images.sh along with the Dockerfile):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn proxy_image_runs_like_the_dockerfile() {
    assert_in_step("proxy", "strait-proxy");
}

#[test]
fn operator_image_runs_like_the_dockerfile() {
    assert_in_step("operator", "strait-operator");
}

/// `text` with its first `from` replaced by `to`; `from` must be there, else the check that
/// uses it would prove nothing.
fn edited(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the Dockerfile no longer contains {from:?}"
    );
    text.replacen(from, to, 1)
}

#[test]
fn a_change_on_one_side_only_is_caught() {
    let text = dockerfile("proxy");
    let config = image_config("strait-proxy");
    assert_eq!(
        mismatches(&text, "strait-proxy", &config),
        Vec::<String>::new()
    );

    // The Dockerfile changes, the image recipe does not.
    let entry = r#"ENTRYPOINT ["/usr/local/bin/strait-proxy"]"#;
    let copy = "COPY --from=build /strait-proxy /usr/local/bin/strait-proxy";
    let cases = [
        ("USER", edited(&text, "USER 65532:65532", "USER 1000:1000")),
        ("EXPOSE", format!("{text}EXPOSE 9090\n")),
        (
            "ENTRYPOINT",
            edited(
                &text,
                entry,
                r#"ENTRYPOINT ["/usr/local/bin/strait-proxy", "run"]"#,
            ),
        ),
        (
            "COPY",
            edited(
                &text,
                copy,
                "COPY --from=build /strait-proxy /usr/bin/strait-proxy",
            ),
        ),
        ("COPY", edited(&text, copy, "")),
    ];
    for (what, changed) in &cases {
        let found = mismatches(changed, "strait-proxy", &config);
        assert!(
            found.iter().any(|m| m.contains(what)),
            "changing {what} in the Dockerfile went unnoticed (found: {found:?})"
        );
    }
    let shell_form = edited(&text, entry, "ENTRYPOINT /usr/local/bin/strait-proxy");
    let found = mismatches(&shell_form, "strait-proxy", &config);
    assert!(
        found.iter().any(|m| m.contains("exec form")),
        "a shell-form ENTRYPOINT went unnoticed (found: {found:?})"
    );

    // The image recipe changes, the Dockerfile does not.
    let mut changed = config.clone();
    changed["config"]["User"] = "0:0".into();
    let found = mismatches(&text, "strait-proxy", &changed);
    assert!(found.iter().any(|m| m.contains("USER")), "{found:?}");
    let mut changed = config.clone();
    changed["config"]["ExposedPorts"] = serde_json::json!({"8080/tcp": {}});
    let found = mismatches(&text, "strait-proxy", &changed);
    assert!(found.iter().any(|m| m.contains("EXPOSE")), "{found:?}");
    let mut changed = config;
    changed["config"]["Entrypoint"] = serde_json::json!(["/strait-proxy"]);
    let found = mismatches(&text, "strait-proxy", &changed);
    assert!(found.iter().any(|m| m.contains("ENTRYPOINT")), "{found:?}");
    assert!(found.iter().any(|m| m.contains("COPYs")), "{found:?}");
}

#[test]
fn the_final_stage_is_the_one_read() {
    let text = "FROM a AS build\nUSER 1\nEXPOSE 1\nCOPY x /bin/x\nENTRYPOINT [\"/bin/x\"]\n\
                # a comment\nRUN echo \\\n  more\nFROM b\nCOPY --from=build \\\n  /x /opt/\n\
                USER 2:2\nEXPOSE 80 53/udp\nENTRYPOINT [\"/opt/x\"]\n";
    let (runtime, copy_dest) = final_stage(text, "x").expect("parses");
    assert_eq!(
        runtime,
        Runtime {
            entrypoint: vec!["/opt/x".into()],
            user: Some("2:2".into()),
            exposed: ["53/udp".to_string(), "80/tcp".to_string()].into(),
        }
    );
    assert_eq!(copy_dest, "/opt/x");
}
