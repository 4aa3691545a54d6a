//! One suite, both backends: the store's rules, revisions, change log,
//! deltas and audit log.

use stoa_control::store::{Actor, Op, Store, StoreError};
use stoa_proto::pb::{self, Kind, resource::Resource as R};

use crate::both_backends;

fn actor() -> Actor {
    Actor {
        name: "tester".into(),
        source: "127.0.0.1:1".into(),
    }
}

fn tenant(name: &str) -> pb::Resource {
    R::Tenant(pb::Tenant {
        name: name.into(),
        display_name: String::new(),
    })
    .into()
}

fn upstream(name: &str, tenant: &str) -> pb::Resource {
    R::Upstream(pb::Upstream {
        name: name.into(),
        tenant: tenant.into(),
        url: "http://127.0.0.1:9/mcp".into(),
        headers: [("Authorization".to_owned(), "Bearer s3cret".to_owned())].into(),
        description: String::new(),
    })
    .into()
}

fn subscription(name: &str, tenant: &str, upstream: &str) -> pb::Resource {
    R::Subscription(pb::Subscription {
        name: name.into(),
        tenant: tenant.into(),
        upstream: upstream.into(),
        tools: vec!["*".into()],
        plan: String::new(),
    })
    .into()
}

fn key(prefix: &str, tenant: &str, subs: &[&str]) -> pb::Resource {
    R::ApiKey(pb::ApiKey {
        prefix: prefix.into(),
        display_name: "k".into(),
        tenant: tenant.into(),
        sha256: vec![7; 32],
        subscriptions: subs.iter().map(|s| s.to_string()).collect(),
    })
    .into()
}

async fn create(s: &Store, r: pb::Resource) -> u64 {
    s.apply(&actor(), "create", vec![Op::Create(r)])
        .await
        .unwrap()
        .0
}

both_backends!(revisions_deltas_and_audit, |s: Store| async move {
    let r0 = s.revision().await.unwrap();
    assert!(r0 >= 1, "opening made the session keys");
    let snap = s.update_since(None).await.unwrap();
    assert!(snap.full && snap.revision == r0);
    assert_eq!(snap.upserts.len(), 1, "the session keys");

    let r1 = create(&s, tenant("acme")).await;
    let r2 = create(&s, upstream("ref", "")).await;
    let r3 = create(&s, subscription("s1", "acme", "ref")).await;
    let r4 = create(&s, key("AAAAbbbb", "acme", &["s1"])).await;
    assert_eq!([r1, r2, r3, r4], [r0 + 1, r0 + 2, r0 + 3, r0 + 4]);
    assert_eq!(*s.head().borrow(), r4, "commits are announced");

    // A delta holds only what changed, at its current state.
    let d = s.update_since(Some(r2)).await.unwrap();
    assert!(!d.full);
    assert_eq!(d.revision, r4);
    let names: Vec<String> = d
        .upserts
        .iter()
        .map(|r| r.reference().to_string())
        .collect();
    assert_eq!(
        names,
        ["subscription \"s1\"", "api_key \"AAAAbbbb\""],
        "parents first"
    );

    let (r5, _) = s
        .apply(
            &actor(),
            "revoke",
            vec![Op::Delete(pb::ResourceRef::new(Kind::ApiKey, "AAAAbbbb"))],
        )
        .await
        .unwrap();
    let d = s.update_since(Some(r4)).await.unwrap();
    assert_eq!((d.upserts.len(), d.removes.len()), (0, 1));
    assert_eq!(d.removes[0].name, "AAAAbbbb");
    assert_eq!(d.revision, r5);
    // A key created and revoked between two revisions is only a remove.
    let d = s.update_since(Some(r3)).await.unwrap();
    assert_eq!((d.upserts.len(), d.removes.len()), (0, 1));

    let empty = s.update_since(Some(r5)).await.unwrap();
    assert!(!empty.full && empty.upserts.is_empty() && empty.removes.is_empty());
    let future = s.update_since(Some(r5 + 100)).await.unwrap();
    assert!(
        future.full,
        "a revision the store never had gets a snapshot"
    );

    let audit = s.audit(0, 100).await.unwrap();
    let last = audit.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.actor.as_str()),
        ("revoke", "tester")
    );
    assert!(last.after_json.is_empty() && last.before_json.contains("AAAAbbbb"));
    let up = audit
        .iter()
        .find(|a| a.resource.as_ref().unwrap().name == "ref")
        .unwrap();
    assert!(
        up.after_json.contains("Authorization") && !up.after_json.contains("s3cret"),
        "secrets never reach the audit log: {}",
        up.after_json
    );
    assert_eq!(s.audit(last.id, 10).await.unwrap().len(), 0);
});

both_backends!(references_and_conflicts, |s: Store| async move {
    create(&s, tenant("acme")).await;
    create(&s, tenant("globex")).await;
    create(&s, upstream("private", "globex")).await;
    let before = s.revision().await.unwrap();

    let err = s
        .apply(&actor(), "create", vec![Op::Create(tenant("acme"))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
    let err = s
        .apply(
            &actor(),
            "create",
            vec![Op::Create(subscription("s", "acme", "nope"))],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::FailedPrecondition(m) if m.contains("upstream \"nope\" does not exist")),
        "{err}"
    );
    let err = s
        .apply(
            &actor(),
            "create",
            vec![Op::Create(subscription("s", "acme", "private"))],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::FailedPrecondition(m) if m.contains("belongs to tenant \"globex\"")),
        "{err}"
    );
    let err = s
        .apply(&actor(), "update", vec![Op::Update(tenant("initech"))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let mut bad = upstream("bad", "");
    if let Some(R::Upstream(u)) = &mut bad.resource {
        u.url = "ftp://x".into();
    }
    let err = s
        .apply(&actor(), "create", vec![Op::Create(bad)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(f) if f.field == "upstream.url"),
        "{err}"
    );
    assert_eq!(
        s.revision().await.unwrap(),
        before,
        "refused writes change nothing"
    );

    create(&s, subscription("s", "globex", "private")).await;
    let err = s
        .apply(
            &actor(),
            "delete",
            vec![Op::Delete(pb::ResourceRef::new(Kind::Upstream, "private"))],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::FailedPrecondition(m) if m.contains("subscription \"s\"")),
        "{err}"
    );
    // Moving the upstream to another tenant would strand the subscription.
    let err = s
        .apply(
            &actor(),
            "update",
            vec![Op::Update(upstream("private", "acme"))],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::FailedPrecondition(_)), "{err}");

    // A failed write in the middle of several leaves nothing behind.
    let err = s
        .apply(
            &actor(),
            "create",
            vec![Op::Create(tenant("initech")), Op::Create(tenant("acme"))],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)));
    assert!(s.get(Kind::Tenant, "initech").await.unwrap().is_none());
});

both_backends!(updates_keep_unshown_secrets, |s: Store| async move {
    create(&s, upstream("gh", "")).await;
    let mut blanked = s
        .get(Kind::Upstream, "gh")
        .await
        .unwrap()
        .unwrap()
        .0
        .redacted();
    if let Some(R::Upstream(u)) = &mut blanked.resource {
        u.description = "GitHub".into();
        u.headers.insert("X-Extra".into(), "1".into());
    }
    s.apply(&actor(), "update", vec![Op::Update(blanked)])
        .await
        .unwrap();
    let (now, _) = s.get(Kind::Upstream, "gh").await.unwrap().unwrap();
    let Some(R::Upstream(u)) = now.resource else {
        panic!()
    };
    assert_eq!(u.headers["Authorization"], "Bearer s3cret");
    assert_eq!(u.headers["X-Extra"], "1");
    assert_eq!(u.description, "GitHub");
});

both_backends!(tools_catalog, |s: Store| async move {
    create(&s, upstream("ref", "")).await;
    let tool = |n: &str, d: &str| pb::Tool {
        upstream: "ref".into(),
        name: n.into(),
        description: d.into(),
        ..Default::default()
    };
    let replace = |tools| Op::ReplaceTools {
        upstream: "ref".into(),
        tools,
    };
    let (r1, _) = s
        .apply(
            &actor(),
            "discover",
            vec![replace(vec![tool("echo", "a"), tool("add", "b")])],
        )
        .await
        .unwrap();
    let (r2, _) = s
        .apply(
            &actor(),
            "discover",
            vec![replace(vec![tool("echo", "a2")])],
        )
        .await
        .unwrap();
    let (tools, _) = s.list(Kind::Tool, None, Some("ref")).await.unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].name(), "ref/echo");
    let d = s.update_since(Some(r1)).await.unwrap();
    assert_eq!(d.revision, r2);
    assert!(
        d.upserts.is_empty() && d.removes.is_empty(),
        "tools are not on the stream"
    );
    // Deleting the upstream takes its catalog with it.
    s.apply(
        &actor(),
        "delete",
        vec![Op::Delete(pb::ResourceRef::new(Kind::Upstream, "ref"))],
    )
    .await
    .unwrap();
    assert!(s.list(Kind::Tool, None, None).await.unwrap().0.is_empty());
});

both_backends!(listing_scopes_by_tenant, |s: Store| async move {
    create(&s, tenant("acme")).await;
    create(&s, tenant("globex")).await;
    create(&s, upstream("shared", "")).await;
    create(&s, upstream("mine", "acme")).await;
    create(&s, upstream("theirs", "globex")).await;
    let names = |v: Vec<pb::Resource>| v.iter().map(|r| r.name()).collect::<Vec<_>>();
    let (all, _) = s.list(Kind::Upstream, None, None).await.unwrap();
    assert_eq!(names(all), ["mine", "shared", "theirs"]);
    let (acme, _) = s.list(Kind::Upstream, Some("acme"), None).await.unwrap();
    assert_eq!(names(acme), ["mine", "shared"]);
});

both_backends!(gateways_and_tokens, |s: Store| async move {
    let mut g = pb::GatewayStatus {
        gateway_id: "gw-1".into(),
        version: "0.1.0".into(),
        address: "127.0.0.1:5".into(),
        control_plane: "cp-a".into(),
        connected: true,
        revision: 3,
        ..Default::default()
    };
    s.put_gateway(&g).await.unwrap();
    g.last_nack_revision = 4;
    g.last_nack = vec![pb::Rejection {
        resource: Some(pb::ResourceRef::new(Kind::Upstream, "x")),
        reason: "no".into(),
    }];
    s.put_gateway(&g).await.unwrap();
    let listed = s.gateways().await.unwrap();
    assert_eq!(listed, vec![g.clone()]);
    s.disconnect_gateways_of("cp-a").await.unwrap();
    assert!(!s.gateways().await.unwrap()[0].connected);

    let h = [9u8; 32];
    assert!(!s.has_tokens("admin").await.unwrap());
    s.add_token("boot", "admin", &h).await.unwrap();
    s.add_token("again", "admin", &h).await.unwrap();
    assert_eq!(s.token(&h, "admin").await.unwrap().as_deref(), Some("boot"));
    assert_eq!(s.token(&h, "gateway").await.unwrap(), None);
});
