//! The store conformance suite, continued: what shows who has moved to COI ([`MigrationStore`](crate::store::migration::MigrationStore)): remote people, pairings, personal invites, samples and announcements.

use super::Backend;
use crate::store::StoreError;
use crate::store::migration::{
    MAX_DISPLAY_NAME, MigrationSample, PairedVia, PairingRow, PersonalInviteRow, RemotePersonRow, Seen,
};

const TG: &str = "telegram";
const CHAT: &str = "-100";

fn person(user: &str, name: &str, first_seen: i64, last_posted: Option<i64>, left_at: Option<i64>) -> RemotePersonRow {
    RemotePersonRow {
        bridge: TG.into(),
        remote_chat: CHAT.into(),
        remote_user: user.into(),
        display_name: name.into(),
        first_seen,
        last_posted,
        left_at,
    }
}

fn pairing(user: &str, address: &str, via: PairedVia, at: i64) -> PairingRow {
    PairingRow { bridge: TG.into(), remote_user: user.into(), address: address.into(), via, paired_at: at }
}

fn sample(chat: &str, at: i64, remote: i64, coi: i64, moved: i64) -> MigrationSample {
    MigrationSample { bridge: TG.into(), remote_chat: chat.into(), at, remote_members: remote, coi_members: coi, moved }
}

pub async fn remote_people_are_noted_joined_posted_and_left(b: &dyn Backend) {
    let s = b.store();
    let note = |user: &'static str, name: &'static str, seen: Seen, at: i64| {
        let s = s.clone();
        async move { s.note_remote_person(TG, CHAT, user, name, seen, at).await.expect("note") }
    };
    note("42", "Ann", Seen::Joined, 100).await;
    note("7", "Bob", Seen::Posted, 150).await;
    note("42", "Ann B.", Seen::Posted, 200).await;
    // A post seen late (older than the latest) does not move last_posted back, and an
    // older sighting moves first_seen back.
    note("42", "Ann B.", Seen::Posted, 180).await;
    note("7", "Bob", Seen::Joined, 120).await;
    // Another chat and another bridge are apart.
    s.note_remote_person(TG, "-200", "42", "Ann", Seen::Posted, 300).await.expect("note");
    s.note_remote_person("matrix", CHAT, "42", "Ann", Seen::Left, 300).await.expect("note");
    assert_eq!(
        s.remote_people(TG, CHAT).await.expect("people"),
        [person("42", "Ann B.", 100, Some(200), None), person("7", "Bob", 120, Some(150), None)]
    );

    // Leaving keeps the latest post; a post older than the leave (a late event) does not
    // bring them back, a later join or post does.
    note("42", "Ann B.", Seen::Left, 400).await;
    note("42", "Ann B.", Seen::Posted, 390).await;
    assert_eq!(s.remote_people(TG, CHAT).await.expect("people")[0], person("42", "Ann B.", 100, Some(390), Some(400)));
    note("42", "Ann B.", Seen::Joined, 500).await;
    note("7", "Bob", Seen::Left, 510).await;
    note("7", "Robert", Seen::Posted, 520).await;
    assert_eq!(
        s.remote_people(TG, CHAT).await.expect("people"),
        [person("42", "Ann B.", 100, Some(390), None), person("7", "Robert", 120, Some(520), None)]
    );
    // A first sighting by leaving: known, and gone.
    note("9", "Cy", Seen::Left, 600).await;
    assert_eq!(s.remote_people(TG, CHAT).await.expect("people")[2], person("9", "Cy", 600, None, Some(600)));
    assert_eq!(s.remote_people(TG, "-999").await.expect("people"), []);

    // A hostile name is cut to MAX_DISPLAY_NAME characters (on a character boundary).
    let long = "é".repeat(MAX_DISPLAY_NAME + 50);
    s.note_remote_person(TG, "-300", "1", &long, Seen::Joined, 1).await.expect("a long name");
    let kept = &s.remote_people(TG, "-300").await.expect("people")[0].display_name;
    assert_eq!(kept.chars().count(), MAX_DISPLAY_NAME);
}

/// Many sightings at once (the bridge's workers, two daemons): every person is counted
/// once, and one person's posts all land (one statement each, no read-then-write).
pub async fn remote_people_noted_at_once_are_all_kept(b: &dyn Backend) {
    let s = b.store();
    let notes = (0..24i64).map(|i| {
        let s = s.clone();
        async move {
            let user = format!("u{}", i % 8);
            s.note_remote_person(TG, CHAT, &user, "Someone", Seen::Posted, 1000 + i).await
        }
    });
    for r in futures::future::join_all(notes).await {
        r.expect("note");
    }
    let people = s.remote_people(TG, CHAT).await.expect("people");
    assert_eq!(people.len(), 8, "{people:?}");
    for p in &people {
        let i: i64 = p.remote_user[1..].parse().expect("number");
        assert_eq!((p.first_seen, p.last_posted), (1000 + i, Some(1016 + i)), "{p:?}");
    }
}

pub async fn a_moved_chat_takes_its_people_invites_samples_and_announcements_along(b: &dyn Backend) {
    let s = b.store();
    let to = "-1001";
    s.note_remote_person(TG, CHAT, "42", "Ann", Seen::Posted, 100).await.expect("note");
    s.note_remote_person(TG, CHAT, "7", "Bob", Seen::Posted, 300).await.expect("note");
    // Bob was already seen in the supergroup: his row there stays, merged.
    s.note_remote_person(TG, to, "7", "Bobby", Seen::Posted, 200).await.expect("note");
    s.note_remote_person("matrix", CHAT, "42", "Ann", Seen::Joined, 100).await.expect("other bridge");
    let invite = PersonalInviteRow {
        auth: "auth-1".into(),
        bridge: TG.into(),
        remote_user: "42".into(),
        remote_chat: Some(CHAT.into()),
        created_at: 50,
    };
    s.add_personal_invite(&invite).await.expect("invite");
    s.record_migration_sample(&sample(CHAT, 10, 5, 1, 0)).await.expect("sample");
    s.record_migration_sample(&sample(CHAT, 20, 5, 2, 1)).await.expect("sample");
    s.record_migration_sample(&sample(to, 20, 6, 3, 2)).await.expect("sample");
    assert!(s.announce_once(TG, CHAT, "closable", 30).await.expect("announce"));

    s.move_remote_people(TG, CHAT, to).await.expect("move");
    assert_eq!(s.remote_people(TG, CHAT).await.expect("people"), []);
    let moved = |user: &str, name: &str, first: i64, posted: i64| RemotePersonRow {
        remote_chat: to.into(),
        ..person(user, name, first, Some(posted), None)
    };
    assert_eq!(
        s.remote_people(TG, to).await.expect("people"),
        [moved("42", "Ann", 100, 100), moved("7", "Bobby", 200, 300)]
    );
    assert_eq!(s.remote_people("matrix", CHAT).await.expect("people").len(), 1, "another bridge's chat stays");
    assert_eq!(
        s.personal_invite("auth-1").await.expect("invite"),
        Some(PersonalInviteRow { remote_chat: Some(to.into()), ..invite })
    );
    assert_eq!(s.migration_samples(TG, CHAT).await.expect("samples"), []);
    assert_eq!(s.migration_samples(TG, to).await.expect("samples"), [sample(to, 10, 5, 1, 0), sample(to, 20, 6, 3, 2)]);
    assert!(!s.announce_once(TG, to, "closable", 40).await.expect("announced already"));
    assert!(s.announce_once(TG, CHAT, "closable", 40).await.expect("the old id is free"));
    // Moving a chat onto itself or from an unknown chat changes nothing.
    s.move_remote_people(TG, to, to).await.expect("move");
    s.move_remote_people(TG, "-5", to).await.expect("move");
    assert_eq!(s.remote_people(TG, to).await.expect("people").len(), 2);
}

pub async fn pairings_are_kept_per_bridge_replaced_and_removed(b: &dyn Backend) {
    let s = b.store();
    assert_eq!(s.pairing(TG, "42").await.expect("pairing"), None);
    s.pair(&pairing("42", "Ann@Example.org", PairedVia::Invite, 100)).await.expect("pair");
    s.pair(&pairing("43", "ann@example.org", PairedVia::Admin, 90)).await.expect("pair");
    s.pair(&pairing("7", "bob@example.org", PairedVia::Admin, 110)).await.expect("pair");
    s.pair(&PairingRow { bridge: "matrix".into(), ..pairing("@ann:hs", "ann@example.org", PairedVia::Invite, 5) })
        .await
        .expect("pair");
    let ann = pairing("42", "ann@example.org", PairedVia::Invite, 100);
    assert_eq!(s.pairing(TG, "42").await.expect("pairing"), Some(ann.clone()), "stored lower-case");
    let second = pairing("43", "ann@example.org", PairedVia::Admin, 90);
    assert_eq!(s.pairings_of_address(TG, "ANN@example.org").await.expect("of address"), [second.clone(), ann.clone()]);
    let bob = pairing("7", "bob@example.org", PairedVia::Admin, 110);
    assert_eq!(s.pairings(TG).await.expect("pairings"), [second.clone(), ann.clone(), bob.clone()]);
    assert_eq!(s.pairings("matrix").await.expect("pairings").len(), 1);

    // A later pairing of the same remote user replaces the first.
    let moved_on = pairing("42", "ann@new.org", PairedVia::Admin, 200);
    s.pair(&moved_on).await.expect("pair again");
    assert_eq!(s.pairing(TG, "42").await.expect("pairing"), Some(moved_on.clone()));
    assert_eq!(s.pairings_of_address(TG, "ann@example.org").await.expect("of address"), std::slice::from_ref(&second));

    assert!(s.unpair(TG, "43").await.expect("unpair"));
    assert!(!s.unpair(TG, "43").await.expect("unpair again"));
    assert!(!s.unpair(TG, "@ann:hs").await.expect("another bridge's user"));
    assert_eq!(s.pairings(TG).await.expect("pairings"), [bob, moved_on]);
    assert_eq!(s.pairings("matrix").await.expect("pairings").len(), 1);
    assert_eq!(PairedVia::parse("something else"), PairedVia::Admin, "never an invite proof");
}

pub async fn personal_invites_are_bound_to_one_remote_user(b: &dyn Backend) {
    let s = b.store();
    let row = PersonalInviteRow {
        auth: "secret-1".into(),
        bridge: TG.into(),
        remote_user: "42".into(),
        remote_chat: None,
        created_at: 100,
    };
    assert_eq!(s.personal_invite("secret-1").await.expect("read"), None);
    s.add_personal_invite(&row).await.expect("add");
    s.add_personal_invite(&row).await.expect("the same again (a retry)");
    assert_eq!(s.personal_invite("secret-1").await.expect("read"), Some(row.clone()));
    let stolen = PersonalInviteRow { remote_user: "666".into(), ..row.clone() };
    let e = s.add_personal_invite(&stolen).await.expect_err("another user's secret");
    assert!(matches!(e, StoreError::Fatal(_)), "{e}");
    let elsewhere = PersonalInviteRow { bridge: "matrix".into(), ..row.clone() };
    assert!(s.add_personal_invite(&elsewhere).await.is_err(), "nor another bridge's");
    assert_eq!(s.personal_invite("secret-1").await.expect("read"), Some(row));
    let other = PersonalInviteRow { auth: "secret-2".into(), remote_chat: Some(CHAT.into()), ..stolen };
    s.add_personal_invite(&other).await.expect("add");
    assert_eq!(s.personal_invite("secret-2").await.expect("read"), Some(other));
}

pub async fn migration_samples_are_kept_per_portal_oldest_first(b: &dyn Backend) {
    let s = b.store();
    for (at, moved) in [(300, 3), (100, 1), (200, 2)] {
        s.record_migration_sample(&sample(CHAT, at, 10, 4, moved)).await.expect("sample");
    }
    s.record_migration_sample(&sample("-200", 150, 1, 1, 1)).await.expect("sample");
    s.record_migration_sample(&MigrationSample { bridge: "matrix".into(), ..sample(CHAT, 150, 1, 1, 1) })
        .await
        .expect("sample");
    // The same time again replaces the sample.
    s.record_migration_sample(&sample(CHAT, 200, 9, 5, 4)).await.expect("sample again");
    assert_eq!(
        s.migration_samples(TG, CHAT).await.expect("samples"),
        [sample(CHAT, 100, 10, 4, 1), sample(CHAT, 200, 9, 5, 4), sample(CHAT, 300, 10, 4, 3)]
    );
    assert_eq!(s.migration_samples(TG, "-200").await.expect("samples").len(), 1);
    assert_eq!(s.migration_samples(TG, "-999").await.expect("samples"), []);
}

/// Two callers racing to say "this group can be closed" announce it once; cleared, it may
/// be made again, once.
pub async fn announcements_are_made_once_even_by_callers_at_once(b: &dyn Backend) {
    let s = b.store();
    let race = || {
        futures::future::join_all((0..8).map(|i| {
            let s = s.clone();
            async move { s.announce_once(TG, CHAT, "closable", 100 + i).await.expect("announce") }
        }))
    };
    assert_eq!(race().await.iter().filter(|first| **first).count(), 1);
    assert!(s.announce_once(TG, CHAT, "other", 100).await.expect("another announcement"));
    assert!(s.announce_once(TG, "-200", "closable", 100).await.expect("another chat"));
    assert!(s.announce_once("matrix", CHAT, "closable", 100).await.expect("another bridge"));
    s.clear_announcement(TG, CHAT, "closable").await.expect("clear");
    s.clear_announcement(TG, CHAT, "never made").await.expect("clearing nothing");
    assert!(!s.announce_once(TG, CHAT, "other", 200).await.expect("not cleared"));
    assert_eq!(race().await.iter().filter(|first| **first).count(), 1);
}
