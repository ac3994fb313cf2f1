//! `config.ini` -> typed, validated [`Config`].
