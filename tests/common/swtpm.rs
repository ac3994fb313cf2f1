//! A swtpm of its own for each test (filled by the tpm backend work).
