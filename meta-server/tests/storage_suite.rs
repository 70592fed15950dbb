//! openraft's storage conformance suite against our RocksDB log store and state machine.
use cairn_meta_server::fsm::Fsm;
use cairn_meta_server::raft::{StorageError, TypeConfig};
use cairn_meta_server::store::digest::Digests;
use cairn_meta_server::store::{open_db, LogStore, StateMachineStore};
use openraft::testing::{StoreBuilder, Suite};
use std::sync::Arc;
use tempfile::TempDir;

/// Each store gets a fresh temp dir, kept alive (and then deleted) with the store.
struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_db(&dir.path().join("db")).expect("open db");
        let fsm = Arc::new(Fsm::open(db.clone()).expect("open fsm"));
        let digests = Arc::new(Digests::load(&db).expect("load digests"));
        let sm = StateMachineStore::new(db.clone(), fsm, dir.path().join("snapshot"), digests)
            .expect("state machine store");
        Ok((dir, LogStore::new(db), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(RocksBuilder) {
        panic!("storage suite failed: {e}");
    }
}
