//! The real `nft` program inside a fresh namespace: the agent's table made, observed as
//! made, its members changed, flushed and made again, iptables' FORWARD chain given the
//! marked rules and then taken back, and the ruleset left as it was.

use std::net::Ipv4Addr;
use std::process::Command;

use quilt_kernel::firewall::Firewall;
use quilt_kernel::firewall::nft::NftFirewall;
use quilt_kernel::firewall::{self, FirewallOp, ForeignChain, MeshRules};
use quilt_testkit::netns::{OwnedNetns, privileged_or_skip, unique_name};

fn nft(ns: &str, args: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args.split_whitespace())
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rules(members: &[u8]) -> MeshRules {
    MeshRules {
        subnet: "10.42.1.0/24".parse().unwrap(),
        cluster: "10.42.0.0/16".parse().unwrap(),
        masquerade: true,
        vxlan_port: 4789,
        members: members
            .iter()
            .map(|m| Ipv4Addr::new(192, 168, 1, *m))
            .collect(),
        forward_interfaces: vec!["vxlan100".into(), "quilt0".into()],
    }
}

#[tokio::test]
async fn the_table_is_made_kept_and_taken_away_and_nothing_else_changes() {
    if !privileged_or_skip("the_table_is_made_kept_and_taken_away_and_nothing_else_changes") {
        return;
    }
    let host = OwnedNetns::create(&unique_name("qkf")).unwrap();
    let ns = host.name().to_string();
    // As Docker leaves a host: iptables-nft's FORWARD chain dropping by default.
    nft(&ns, "add table ip filter");
    let mut add_chain = Command::new("ip");
    add_chain.args([
        "netns",
        "exec",
        &ns,
        "nft",
        "add chain ip filter FORWARD { type filter hook forward priority 0 ; policy drop ; }",
    ]);
    assert!(add_chain.status().unwrap().success());
    let before = nft(&ns, "list ruleset");

    let fw = NftFirewall::in_netns(&ns);
    let desired = rules(&[12, 13]);
    let observed = fw.observe().await.unwrap();
    assert!(observed.table.is_none());
    assert_eq!(observed.forward_chain, Some(ForeignChain::Forward));
    let ops = firewall::plan(&desired, &observed);
    fw.apply(&ops).await.unwrap();
    // Converged: nothing more to do.
    let observed = fw.observe().await.unwrap();
    assert!(
        firewall::plan(&desired, &observed).is_empty(),
        "{observed:?}"
    );
    let listing = nft(&ns, "list table inet quilt");
    assert!(listing.contains("masquerade"), "{listing}");
    assert!(listing.contains("192.168.1.12"), "{listing}");
    let forward = nft(&ns, "list chain ip filter FORWARD");
    assert_eq!(forward.matches("comment \"quilt").count(), 4, "{forward}");
    assert!(forward.contains("policy drop"), "{forward}");

    // Members change by element.
    let desired = rules(&[12, 14]);
    let ops = firewall::plan(&desired, &fw.observe().await.unwrap());
    assert!(
        ops.iter()
            .all(|o| matches!(o, FirewallOp::AddMembers(_) | FirewallOp::DeleteMembers(_))),
        "{ops:?}"
    );
    fw.apply(&ops).await.unwrap();
    let members = fw.observe().await.unwrap().table.unwrap().members.unwrap();
    assert_eq!(members, desired.members);

    // Flushed, then deleted: made again.
    nft(&ns, "flush table inet quilt");
    let ops = firewall::plan(&desired, &fw.observe().await.unwrap());
    assert!(matches!(ops[0], FirewallOp::ReplaceTable(_)), "{ops:?}");
    fw.apply(&ops).await.unwrap();
    nft(&ns, "delete table inet quilt");
    fw.apply(&firewall::plan(&desired, &fw.observe().await.unwrap()))
        .await
        .unwrap();
    assert!(firewall::plan(&desired, &fw.observe().await.unwrap()).is_empty());

    // Leaving: the ruleset is what it was.
    fw.apply(&firewall::plan_removal(&fw.observe().await.unwrap()))
        .await
        .unwrap();
    assert_eq!(nft(&ns, "list ruleset"), before);
}
