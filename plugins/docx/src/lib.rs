//! `docx` plugin (placeholder until the DOCX issue lands): offers no format.
