//! Unprivileged users and groups that tests create and remove (also when the test fails,
//! on drop): `quilt-test-*` system accounts without a home, to run clients as.

use std::process::Command;

use crate::netns::unique_name;

/// A system group made for one test; deleted on drop.
#[derive(Debug)]
pub struct TestGroup {
    pub name: String,
    pub gid: u32,
}

impl TestGroup {
    /// `groupadd --system quilt-test-g-PID-N`; panics naming the step that failed.
    pub fn create() -> Self {
        let name = unique_name("quilt-test-g");
        run("groupadd", &["--system", &name]);
        let gid = nix::unistd::Group::from_name(&name)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("group {name} was made but cannot be found"))
            .gid
            .as_raw();
        Self { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

/// A system user without a home made for one test, optionally a member of more groups;
/// deleted on drop (with its own group).
#[derive(Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    /// `useradd --system --no-create-home --user-group [-G GROUPS] quilt-test-u-PID-N`.
    pub fn create(groups: &[&TestGroup]) -> Self {
        let name = unique_name("quilt-test-u");
        let mut args = vec![
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
        ];
        let list: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let list = list.join(",");
        if !list.is_empty() {
            args.extend(["-G", &list]);
        }
        args.push(&name);
        run("useradd", &args);
        let user = nix::unistd::User::from_name(&name)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("user {name} was made but cannot be found"));
        Self {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            name,
        }
    }

    /// `setpriv` arguments that run a program as this user with only its own group
    /// (`--clear-groups`), or with its groups from the database (`init_groups`).
    pub fn setpriv_args(&self, init_groups: bool) -> Vec<String> {
        vec![
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            if init_groups {
                "--init-groups".into()
            } else {
                "--clear-groups".into()
            },
        ]
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
        // --user-group made a group of the same name; userdel removes it unless a member
        // is left, so make sure.
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
