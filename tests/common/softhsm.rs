//! A SoftHSM token of its own for each test (filled by the pkcs11 backend work).
