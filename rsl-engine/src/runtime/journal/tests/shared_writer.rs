//! Journals sharing one writer thread ([`JournalGroup`]).

use super::*;

/// `n` journals in their own directories, members of one group.
fn members(n: usize) -> (Vec<tempfile::TempDir>, Vec<Opened>) {
    let group = JournalGroup::new();
    let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let opened = dirs.iter().map(|d| open(JournalOptions { group: Some(group.clone()), ..options(d.path()) }, None).unwrap()).collect();
    (dirs, opened)
}

/// Journal k's records: votes whose ballot says whose they are.
fn records_of(k: usize, decrees: std::ops::RangeInclusive<u64>) -> Vec<Message> {
    decrees.map(|d| vote(d, 2 + k as u32)).collect()
}

fn replayed(dir: &Path) -> Vec<Message> {
    open(options(dir), None).unwrap().replay.iter().map(|m| (**m).clone()).collect()
}

#[test]
fn each_member_gets_its_records_durable_in_its_own_files_in_order() {
    let (dirs, mut js) = members(3);
    // The last syncs inline when idle, as a protocol thread does.
    js[2].journal.defer_writes();
    for d in 1..=30 {
        for (k, j) in js.iter_mut().enumerate() {
            j.journal.append(d, &vote(d, 2 + k as u32)).unwrap();
        }
        if d % 3 == 0 {
            js[2].journal.flush(d % 2 == 0);
        }
    }
    for j in &js[..2] {
        while j.durable.recv().unwrap() < 30 {}
    }
    assert!(js.iter().all(|j| j.journal.syncs() > 0));
    for j in js {
        j.journal.close().unwrap();
        assert!(j.errors.try_recv().is_err());
    }
    for (k, dir) in dirs.iter().enumerate() {
        assert_eq!(logs_in(dir.path()), [0], "one log per journal, in its own directory");
        assert_eq!(replayed(dir.path()), records_of(k, 1..=30), "journal {k}'s records, in order, and only its");
    }
}

#[test]
fn one_members_io_error_stops_it_alone() {
    let (dirs, mut js) = members(2);
    for j in js.iter_mut() {
        write_all(j, &records_of(0, 1..=3));
    }
    js[0].journal.fail_writes();
    js[0].journal.append(4, &vote(4, 2)).unwrap();
    js[1].journal.append(4, &vote(4, 2)).unwrap();
    let err = js[0].errors.recv().unwrap();
    assert!(err.to_string().contains("injected"), "{err}");
    while js[1].durable.recv().unwrap() < 4 {}
    assert!(matches!(js[0].journal.append(5, &vote(5, 2)), Err(JournalError::Stopped(_))));
    assert!(js[0].durable.try_recv().is_err(), "nothing after the failure is durable");
    // The other member goes on.
    for d in 5..=8 {
        js[1].journal.append(d, &vote(d, 2)).unwrap();
    }
    while js[1].durable.recv().unwrap() < 8 {}
    let mut js = js.into_iter();
    let (failed, healthy) = (js.next().unwrap(), js.next().unwrap());
    assert!(matches!(failed.journal.close(), Err(JournalError::Stopped(_))));
    assert!(failed.errors.try_recv().is_err(), "on_error is called once");
    healthy.journal.close().unwrap();
    assert!(healthy.errors.try_recv().is_err());
    assert_eq!(replayed(dirs[0].path()), records_of(0, 1..=3), "what was reported durable is there");
    assert_eq!(replayed(dirs[1].path()), records_of(0, 1..=8));
}

#[test]
fn the_last_batch_is_written_at_close_and_the_group_outlives_its_members() {
    let group = JournalGroup::new();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2u64 {
        let mut j =
            open(JournalOptions { group: Some(group.clone()), ..options(dir.path()) }, Some(round * 10).filter(|_| round > 0)).unwrap();
        j.journal.defer_writes();
        for d in 1..=5 {
            j.journal.append(d, &vote(round * 10 + d, 2)).unwrap();
        }
        // Never flushed: close writes it.
        j.journal.close().unwrap();
    }
    let all: Vec<u64> = replayed(dir.path()).iter().map(|m| m.header.decree).collect();
    assert_eq!(all, [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]);
}

#[test]
fn a_failing_sync_fails_that_member_alone_and_names_its_file() {
    let _scenario = fail::FailScenario::setup();
    let (dirs, mut js) = members(3);
    let sick = dirs[1].path().display().to_string();
    fail::cfg(crate::faults::JOURNAL_FSYNC, &format!("return(eio@{sick})")).unwrap();
    for d in 1..=3 {
        for j in js.iter_mut() {
            // The sick member refuses appends once it stopped.
            let appended = j.journal.append(d, &vote(d, 2));
            assert!(matches!(appended, Ok(_) | Err(JournalError::Stopped(_))), "{appended:?}");
        }
    }
    let err = js[1].errors.recv().unwrap().to_string();
    assert!(err.contains("injected at journal::fsync") && err.contains(&sick), "{err}");
    assert_eq!(err.matches(&sick).count(), 1, "the file named once: {err}");
    for k in [0, 2] {
        while js[k].durable.recv().unwrap() < 3 {}
    }
    assert!(js[1].durable.try_recv().is_err(), "nothing of the failed member is reported durable");
    fail::remove(crate::faults::JOURNAL_FSYNC);
    for (k, j) in js.into_iter().enumerate() {
        assert_eq!(j.journal.close().is_err(), k == 1);
    }
    assert_eq!(replayed(dirs[0].path()), records_of(0, 1..=3));
    assert_eq!(replayed(dirs[2].path()), records_of(0, 1..=3));
}

/// A member whose sync hangs keeps one writer, however often it is woken meanwhile: the
/// others still write the other members (with three members the group has three writers).
#[test]
fn a_member_whose_sync_hangs_holds_one_writer_not_the_pool() {
    let (dirs, mut js) = members(3);
    let group = js[0].journal.shared.group.clone().expect("a member of a group");
    let held = group.hold_writes(&js[0].journal.shared);
    for d in 1..=20 {
        // Each append wakes the stuck member's writers again.
        js[0].journal.append(d, &vote(d, 2)).unwrap();
        std::thread::yield_now();
    }
    for d in 1..=20 {
        for j in &mut js[1..] {
            j.journal.append(d, &vote(d, 3)).unwrap();
        }
    }
    for j in &js[1..] {
        while j.durable.recv().unwrap() < 20 {}
    }
    assert!(js[0].durable.try_recv().is_err(), "the stuck member has nothing durable");
    drop(held);
    while js[0].durable.recv().unwrap() < 20 {}
    for j in js {
        j.journal.close().unwrap();
    }
    assert_eq!(replayed(dirs[0].path()), records_of(0, 1..=20));
    assert_eq!(replayed(dirs[2].path()), records_of(1, 1..=20));
}
