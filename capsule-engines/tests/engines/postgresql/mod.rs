//! The PostgreSQL engine end to end: backup, restore (safe, in place,
//! target database), verify drills, legacy backups, failures.

mod encryption;
mod failures;
mod legacy;
mod roundtrip;
mod support;
mod tls;
mod verify;
