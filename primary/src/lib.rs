//! The node while primary: WAL capture and checkpoint ownership, the write
//! fence, the file watcher and sender. Filled by the database and file-set
//! issues; each engine implements `tandem_sync::resource::Resource` so that it
//! takes part in the switchover's drain and confirm steps.
