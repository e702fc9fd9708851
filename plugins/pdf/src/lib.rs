//! `pdf` plugin (placeholder until the PDF issue lands): offers no format.
