//! Exactly-once mutations: a mutation applied under a request id (`Once`) records its reply,
//! and a retry of the same id — the client lost the reply with the leader that sent it — gets
//! the recorded reply and changes nothing. Failures are not recorded: they changed nothing,
//! so a retry may run. `PruneRequests` forgets ids no client will retry any more, by the log
//! index that applied them (see `crate::log_clock`), never by wall time.
use super::schema::{decode_json, fs_err, pair_key, CF_REQUESTS};
use super::tx::Tx;
use crate::command::{CommandResult, Once, PruneRequests, Reply, Time};
use cairn_common::error::ErrorKind;
use serde::{Deserialize, Serialize};

/// The recorded result of a mutation applied under a request id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct RequestRecord {
    at: Time,
    reply: Reply,
    /// The log index of the entry that applied it.
    #[serde(default)]
    index: u64,
}

impl Once {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        if self.cmd.is_request_bookkeeping() {
            return Err(fs_err(
                ErrorKind::InvalidArgument,
                "a request id cannot wrap this command",
            ));
        }
        let key = pair_key(self.client, self.seq);
        if let Some(rec) = tx.kv_get_json::<RequestRecord>(CF_REQUESTS, &key)? {
            return Ok(rec.reply);
        }
        let reply = self.cmd.apply(tx)?;
        let rec = RequestRecord {
            at: self.now,
            reply: reply.clone(),
            index: tx.index(),
        };
        tx.kv_put_json(CF_REQUESTS, key, &rec);
        Ok(reply)
    }
}

impl PruneRequests {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let mut old = Vec::new();
        for item in tx.fsm().iter_prefix(CF_REQUESTS, &[], &[])? {
            let (k, v) = item?;
            let rec: RequestRecord = decode_json(&v)?;
            // Records from before they kept their index (0) fall back to the wall time.
            let expired = match rec.index {
                0 => rec.at < self.before,
                index => index < self.before_index,
            };
            if expired {
                old.push(k.to_vec());
            }
        }
        for k in old {
            tx.kv_put(CF_REQUESTS, k, None);
        }
        Ok(Reply::Empty)
    }
}
