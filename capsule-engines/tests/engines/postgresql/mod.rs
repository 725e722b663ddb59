//! The PostgreSQL engine end to end: backup, restore (safe, in place,
//! target database), verify drills, legacy backups, failures.

mod failures;
mod legacy;
mod roundtrip;
mod support;
mod verify;
