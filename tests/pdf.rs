//! pdf plugin tests (see the issue); filled in by its owner.

mod common;
