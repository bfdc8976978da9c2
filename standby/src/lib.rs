//! The node while standby: transaction apply, file apply, catch-up and
//! resync, promotion readiness. Filled by the database and file-set issues;
//! each engine implements `tandem_sync::resource::Resource` (the confirm step).
