//! # capsule-engines
//!
//! The database engines of capsule, each implementing
//! [`capsule_core::Engine`]: `postgresql`, `redis` and `elasticsearch`
//! modules land with their own issues. This crate holds no domain logic of
//! its own beyond driving each database's tools and protocols.
//!
//! ```
//! // Engines are used through the core's object-safe trait:
//! fn label(engine: &dyn capsule_core::Engine) -> String {
//!     engine.to_string()
//! }
//! # let _ = label;
//! ```
