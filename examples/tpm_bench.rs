//! Prints TPM key store throughput: signatures per second with the store's
//! reused session, and, for comparison, with a new HMAC session per
//! signature (raw tss-esapi). Not a test: numbers only.
//!
//! ```sh
//! swtpm socket --tpm2 --server type=tcp,port=2321 --ctrl type=tcp,port=2322 \
//!     --tpmstate dir=$(mktemp -d) --flags not-need-init,startup-clear &
//! cargo run --release --example tpm_bench -- swtpm:host=127.0.0.1,port=2321 [N]
//! ```

#[cfg(not(feature = "tpm"))]
fn main() {
    eprintln!(
        "tpm_bench needs the tpm feature: cargo run --release --features tpm --example tpm_bench"
    );
}

#[cfg(feature = "tpm")]
fn main() {
    bench::main();
}

#[cfg(feature = "tpm")]
mod bench {
    use std::time::Instant;

    use prov_agent::keystore::tpm::TpmKeyStore;
    use prov_agent::keystore::{KeyAlgorithm, KeyLabel, KeyStore, TpmKeyStorage, TpmSettings};

    pub fn main() {
        let mut args = std::env::args().skip(1);
        let tcti = args
            .next()
            .unwrap_or_else(|| "swtpm:host=127.0.0.1,port=2321".into());
        let n: u32 = args.next().map(|a| a.parse().unwrap()).unwrap_or(2000);
        let dir = tempfile::tempdir().unwrap();

        for storage in [TpmKeyStorage::Blob, TpmKeyStorage::Persistent] {
            let store = TpmKeyStore::open(&TpmSettings {
                tcti: tcti.clone(),
                storage,
                persistent_base: 0x8100_0100,
                key_dir: dir.path().join(format!("{storage:?}")),
            })
            .unwrap();
            for alg in KeyAlgorithm::ALL {
                let gens = if alg.rsa_bits().is_some() { 3 } else { 20 };
                let t = Instant::now();
                for i in 0..gens {
                    let l = KeyLabel::new(format!("gen-{alg}-{i}")).unwrap();
                    store.generate(&l, alg).unwrap();
                }
                let gen_rate = f64::from(gens) / t.elapsed().as_secs_f64();
                let l = KeyLabel::new(format!("gen-{alg}-0")).unwrap();
                let scheme = alg.default_scheme();
                let t = Instant::now();
                for _ in 0..n {
                    store.sign(&l, scheme, b"benchmark message").unwrap();
                }
                let el = t.elapsed().as_secs_f64();
                println!(
                    "tpm {storage:?} {alg}: {:.0} signatures/s ({:.3} ms each, reused session), \
                     {gen_rate:.1} key generations/s",
                    f64::from(n) / el,
                    el * 1000.0 / f64::from(n)
                );
                for i in 0..gens {
                    store
                        .delete(&KeyLabel::new(format!("gen-{alg}-{i}")).unwrap())
                        .unwrap();
                }
            }
        }

        new_session_per_call(&tcti, n);
    }

    /// The same P-256 signature with a fresh HMAC session for every call: what
    /// the store avoids by keeping one.
    fn new_session_per_call(tcti: &str, n: u32) {
        use std::str::FromStr;
        use tss_esapi::attributes::ObjectAttributesBuilder;
        use tss_esapi::constants::{SessionType, StructureTag};
        use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
        use tss_esapi::interface_types::ecc::EccCurve;
        use tss_esapi::interface_types::resource_handles::Hierarchy;
        use tss_esapi::interface_types::session_handles::AuthSession;
        use tss_esapi::structures::{
            Digest, EccPoint, EccScheme, HashScheme, HashcheckTicket, KeyDerivationFunctionScheme,
            PublicBuilder, PublicEccParameters, SignatureScheme as S, SymmetricDefinition,
            SymmetricDefinitionObject,
        };

        let mut ctx =
            tss_esapi::Context::new(tss_esapi::tcti_ldr::TctiNameConf::from_str(tcti).unwrap())
                .unwrap();
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_sign_encrypt(true)
            .build()
            .unwrap();
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_ecc_parameters(PublicEccParameters::new(
                SymmetricDefinitionObject::Null,
                EccScheme::Null,
                EccCurve::NistP256,
                KeyDerivationFunctionScheme::Null,
            ))
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .unwrap();
        let key = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create_primary(Hierarchy::Endorsement, public, None, None, None, None)
            })
            .unwrap()
            .key_handle;
        let digest = Digest::try_from(vec![7u8; 32]).unwrap();
        let ticket = HashcheckTicket::try_from(tss_esapi::tss2_esys::TPMT_TK_HASHCHECK {
            tag: StructureTag::Hashcheck.into(),
            hierarchy: tss_esapi::handles::TpmHandle::from(Hierarchy::Null).into(),
            digest: Default::default(),
        })
        .unwrap();
        let scheme = S::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let t = Instant::now();
        for _ in 0..n {
            let session = ctx
                .start_auth_session(
                    None,
                    None,
                    None,
                    SessionType::Hmac,
                    SymmetricDefinition::Null,
                    HashingAlgorithm::Sha256,
                )
                .unwrap();
            ctx.execute_with_session(session, |c| {
                c.sign(key, digest.clone(), scheme, ticket.clone())
            })
            .unwrap();
            let handle = tss_esapi::handles::SessionHandle::from(session.unwrap());
            ctx.flush_context(handle.into()).unwrap();
        }
        let el = t.elapsed().as_secs_f64();
        println!(
            "raw tss-esapi ec-p256, new HMAC session per signature: {:.0} signatures/s ({:.3} ms each)",
            f64::from(n) / el,
            el * 1000.0 / f64::from(n)
        );
        let reused = ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::Null,
                HashingAlgorithm::Sha256,
            )
            .unwrap();
        let (attrs, mask) = tss_esapi::attributes::SessionAttributesBuilder::new()
            .with_continue_session(true)
            .build();
        ctx.tr_sess_set_attributes(reused.unwrap(), attrs, mask)
            .unwrap();
        let t = Instant::now();
        for _ in 0..n {
            ctx.execute_with_session(reused, |c| {
                c.sign(key, digest.clone(), scheme, ticket.clone())
            })
            .unwrap();
        }
        let el = t.elapsed().as_secs_f64();
        println!(
            "raw tss-esapi ec-p256, one reused HMAC session: {:.0} signatures/s ({:.3} ms each)",
            f64::from(n) / el,
            el * 1000.0 / f64::from(n)
        );
        let t = Instant::now();
        for _ in 0..n {
            ctx.execute_with_session(Some(AuthSession::Password), |c| {
                c.sign(key, digest.clone(), scheme, ticket.clone())
            })
            .unwrap();
        }
        let el = t.elapsed().as_secs_f64();
        println!(
            "raw tss-esapi ec-p256, password session (no HMAC): {:.0} signatures/s ({:.3} ms each)",
            f64::from(n) / el,
            el * 1000.0 / f64::from(n)
        );
    }
}
