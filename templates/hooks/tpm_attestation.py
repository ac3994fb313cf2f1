"""TPM 2.0 attestation checked without a TPM: the structures a TPM marshals
(TPMT_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE), TPM2_MakeCredential for the
manufacturer's CA, the verification of a TPM2_Certify for the
pre-provisioning hook, and the X.509 checks both need.

Only the standard library and ``cryptography`` (a Lambda has no TPM
libraries). References: TPM 2.0 Library, Part 1 (Architecture: 11.4.10.2
KDFa, 24 Credential Protection) and Part 2 (Structures).

Every check that fails raises AttestationRefused, whose message names what
was wrong; nothing here logs or prints.
"""

import base64
import datetime
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509 import verification

try:  # CFB is "decrepit" from cryptography 47 on; the TPM's credential protection uses it
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB


class AttestationRefused(Exception):
    """The evidence does not prove what it must; the message says why."""


# TPM_ALG_ID (Part 2, 6.3).
ALG_RSA = 0x0001
ALG_SHA1 = 0x0004
ALG_AES = 0x0006
ALG_MGF1 = 0x0007
ALG_KEYEDHASH = 0x0008
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_NULL = 0x0010
ALG_SM4 = 0x0013
ALG_RSASSA = 0x0014
ALG_RSAES = 0x0015
ALG_RSAPSS = 0x0016
ALG_OAEP = 0x0017
ALG_ECDSA = 0x0018
ALG_ECDH = 0x0019
ALG_ECDAA = 0x001A
ALG_SM2 = 0x001B
ALG_ECSCHNORR = 0x001C
ALG_ECMQV = 0x001D
ALG_KDF1_SP800_56A = 0x0020
ALG_KDF2 = 0x0021
ALG_KDF1_SP800_108 = 0x0022
ALG_ECC = 0x0023
ALG_SYMCIPHER = 0x0025
ALG_CAMELLIA = 0x0026
ALG_CFB = 0x0043

# TPM_GENERATED_VALUE and TPM_ST_ATTEST_CERTIFY (Part 2, 6.2 and 6.9).
TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_CERTIFY = 0x8017

# TPMA_OBJECT bits (Part 2, 8.3).
FIXED_TPM = 1 << 1
FIXED_PARENT = 1 << 4
SENSITIVE_DATA_ORIGIN = 1 << 5
RESTRICTED = 1 << 16
DECRYPT = 1 << 17
SIGN = 1 << 18

ATTRIBUTE_NAMES = {
    FIXED_TPM: "fixedTPM",
    FIXED_PARENT: "fixedParent",
    SENSITIVE_DATA_ORIGIN: "sensitiveDataOrigin",
    RESTRICTED: "restricted",
    DECRYPT: "decrypt",
    SIGN: "sign",
}

# name: (hashlib name, cryptography hash class, digest size)
HASHES = {
    ALG_SHA1: ("sha1", hashes.SHA1, 20),
    ALG_SHA256: ("sha256", hashes.SHA256, 32),
    ALG_SHA384: ("sha384", hashes.SHA384, 48),
    ALG_SHA512: ("sha512", hashes.SHA512, 64),
}
# Names and signatures that bind a key to a gateway: no SHA-1.
STRONG_HASHES = (ALG_SHA256, ALG_SHA384, ALG_SHA512)

CURVES = {0x0003: ec.SECP256R1, 0x0004: ec.SECP384R1, 0x0005: ec.SECP521R1}

# Schemes whose details are one hash algorithm (TPMS_SCHEME_HASH), or none.
_HASH_SCHEMES = {ALG_RSASSA, ALG_RSAPSS, ALG_OAEP, ALG_ECDSA, ALG_ECDH, ALG_SM2,
                 ALG_ECSCHNORR, ALG_ECMQV}
_KDF_SCHEMES = {ALG_MGF1, ALG_KDF1_SP800_56A, ALG_KDF2, ALG_KDF1_SP800_108}
_SYM_OBJECTS = {ALG_AES, ALG_SM4, ALG_CAMELLIA}

# tcg-kp-EKCertificate (TCG EK Credential Profile 2.0, 3.2.16).
EK_CERTIFICATE_EKU = x509.ObjectIdentifier("2.23.133.8.1")


def alg_name(alg):
    return {ALG_SHA1: "SHA-1", ALG_SHA256: "SHA-256", ALG_SHA384: "SHA-384",
            ALG_SHA512: "SHA-512", ALG_RSA: "RSA", ALG_ECC: "ECC", ALG_NULL: "NULL",
            ALG_RSASSA: "RSASSA", ALG_RSAPSS: "RSAPSS", ALG_ECDSA: "ECDSA"}.get(alg, f"0x{alg:04x}")


class _Reader:
    """Big-endian reads from a TPM structure; any shortfall is a refusal."""

    def __init__(self, data, what):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise AttestationRefused(f"{what} is not bytes")
        self.data = bytes(data)
        self.at = 0
        self.what = what

    def take(self, n, field):
        if self.at + n > len(self.data):
            raise AttestationRefused(
                f"{self.what} is truncated: {field} needs {n} bytes at offset {self.at}, "
                f"{len(self.data) - self.at} left"
            )
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def u8(self, field):
        return self.take(1, field)[0]

    def u16(self, field):
        return struct.unpack(">H", self.take(2, field))[0]

    def u32(self, field):
        return struct.unpack(">I", self.take(4, field))[0]

    def u64(self, field):
        return struct.unpack(">Q", self.take(8, field))[0]

    def tpm2b(self, field, limit):
        size = self.u16(field)
        if size > limit:
            raise AttestationRefused(f"{self.what}: {field} is {size} bytes, more than {limit}")
        return self.take(size, field)

    def end(self):
        if self.at != len(self.data):
            raise AttestationRefused(
                f"{self.what} has {len(self.data) - self.at} bytes after its end (offset {self.at})"
            )


def _hash_alg(alg, field, what):
    if alg not in HASHES:
        raise AttestationRefused(f"{what}: {field} {alg_name(alg)} is not a supported hash algorithm")
    return alg


def _scheme(r, field, allowed):
    """TPMT_*_SCHEME: (scheme, hash or None); ECDAA's count is skipped."""
    scheme = r.u16(field)
    if scheme == ALG_NULL or scheme == ALG_RSAES:
        detail = None
    elif scheme in _HASH_SCHEMES or scheme in _KDF_SCHEMES:
        detail = r.u16(f"{field}.hashAlg")
    elif scheme == ALG_ECDAA:
        detail = r.u16(f"{field}.hashAlg")
        r.u16(f"{field}.count")
    else:
        raise AttestationRefused(f"{r.what}: {field} {alg_name(scheme)} is not a known scheme")
    if scheme not in allowed:
        raise AttestationRefused(f"{r.what}: {field} {alg_name(scheme)} is not allowed here")
    return scheme, detail


def _sym_def_object(r):
    """TPMT_SYM_DEF_OBJECT: (algorithm, keyBits, mode), or (NULL, 0, NULL)."""
    alg = r.u16("parameters.symmetric.algorithm")
    if alg == ALG_NULL:
        return (ALG_NULL, 0, ALG_NULL)
    if alg not in _SYM_OBJECTS:
        raise AttestationRefused(f"{r.what}: symmetric algorithm {alg_name(alg)} is not known")
    return (alg, r.u16("parameters.symmetric.keyBits"), r.u16("parameters.symmetric.mode"))


@dataclass(frozen=True)
class RsaParms:
    symmetric: tuple
    scheme: tuple
    key_bits: int
    exponent: int


@dataclass(frozen=True)
class EccParms:
    symmetric: tuple
    scheme: tuple
    curve_id: int
    kdf: tuple


@dataclass(frozen=True)
class Public:
    """A parsed TPMT_PUBLIC. `unique` is the RSA modulus, or the ECC point (x, y)."""

    type: int
    name_alg: int
    object_attributes: int
    auth_policy: bytes
    parameters: object
    unique: object
    marshalled: bytes

    def name(self):
        """The TPM name: nameAlg || H_nameAlg(TPMT_PUBLIC) (Part 1, 16)."""
        h = hashlib.new(HASHES[self.name_alg][0], self.marshalled).digest()
        return struct.pack(">H", self.name_alg) + h

    def public_key(self):
        if self.type == ALG_RSA:
            e = self.parameters.exponent or 65537  # 0 means the default exponent
            n = int.from_bytes(self.unique, "big")
            try:
                return rsa.RSAPublicNumbers(e, n).public_key()
            except ValueError as err:
                raise AttestationRefused(f"TPMT_PUBLIC: the RSA key is not valid ({err})")
        x, y = self.unique
        curve = CURVES[self.parameters.curve_id]()
        try:
            return ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            ).public_key()
        except ValueError as err:
            raise AttestationRefused(f"TPMT_PUBLIC: the ECC point is not on {curve.name} ({err})")

    def has(self, bit):
        return bool(self.object_attributes & bit)

    @property
    def fixed_tpm(self):
        return self.has(FIXED_TPM)

    @property
    def fixed_parent(self):
        return self.has(FIXED_PARENT)

    @property
    def sensitive_data_origin(self):
        return self.has(SENSITIVE_DATA_ORIGIN)

    @property
    def sign(self):
        return self.has(SIGN)

    @property
    def restricted(self):
        return self.has(RESTRICTED)

    @property
    def decrypt(self):
        return self.has(DECRYPT)

    def missing(self, *bits):
        """The names of the given attributes this key lacks, in order."""
        return [ATTRIBUTE_NAMES[b] for b in bits if not self.has(b)]


def parse_public(b, what="TPMT_PUBLIC"):
    """A marshalled TPMT_PUBLIC (no TPM2B size) of an RSA or ECC key."""
    r = _Reader(b, what)
    type_ = r.u16("type")
    if type_ in (ALG_KEYEDHASH, ALG_SYMCIPHER):
        raise AttestationRefused(f"{what}: type {alg_name(type_)} is not an asymmetric key")
    if type_ not in (ALG_RSA, ALG_ECC):
        raise AttestationRefused(f"{what}: type {alg_name(type_)} is not RSA or ECC")
    name_alg = _hash_alg(r.u16("nameAlg"), "nameAlg", what)
    attributes = r.u32("objectAttributes")
    auth_policy = r.tpm2b("authPolicy", 64)
    symmetric = _sym_def_object(r)
    if type_ == ALG_RSA:
        scheme = _scheme(r, "parameters.scheme", {ALG_NULL, ALG_RSASSA, ALG_RSAPSS, ALG_RSAES, ALG_OAEP})
        key_bits = r.u16("parameters.keyBits")
        exponent = r.u32("parameters.exponent")
        parameters = RsaParms(symmetric, scheme, key_bits, exponent)
        unique = r.tpm2b("unique (RSA modulus)", 512)
        if len(unique) * 8 != key_bits:
            raise AttestationRefused(
                f"{what}: the modulus is {len(unique) * 8} bits, keyBits says {key_bits}"
            )
    else:
        scheme = _scheme(r, "parameters.scheme",
                         {ALG_NULL, ALG_ECDSA, ALG_ECDH, ALG_ECDAA, ALG_SM2, ALG_ECSCHNORR, ALG_ECMQV})
        curve_id = r.u16("parameters.curveID")
        if curve_id not in CURVES:
            raise AttestationRefused(f"{what}: curve 0x{curve_id:04x} is not NIST P-256, P-384 or P-521")
        kdf = _scheme(r, "parameters.kdf", {ALG_NULL} | _KDF_SCHEMES)
        parameters = EccParms(symmetric, scheme, curve_id, kdf)
        size = (CURVES[curve_id].key_size + 7) // 8
        x = r.tpm2b("unique.x", size)
        y = r.tpm2b("unique.y", size)
        unique = (x, y)
    r.end()
    return Public(type_, name_alg, attributes, auth_policy, parameters, unique, bytes(b))


def check_name_alg(public, what):
    if public.name_alg not in STRONG_HASHES:
        raise AttestationRefused(f"{what}: nameAlg {alg_name(public.name_alg)} is too weak for a name")


def parse_name(name, what="name"):
    """A TPM name of an object: nameAlg (2 bytes) || digest of its size."""
    if len(name) < 2:
        raise AttestationRefused(f"{what} is {len(name)} bytes, too short for a name")
    alg = struct.unpack(">H", name[:2])[0]
    if alg not in HASHES or len(name) != 2 + HASHES[alg][2]:
        raise AttestationRefused(f"{what} is not nameAlg || digest of a supported hash")
    return alg


# --- TPM2_MakeCredential ---------------------------------------------------


def kdfa(hash_alg, key, label, context_u, context_v, bits):
    """KDFa (Part 1, 11.4.10.2): SP 800-108 counter mode with HMAC; the label
    is used with its terminating NUL."""
    if not label.endswith(b"\0"):
        label += b"\0"
    digest = HASHES[hash_alg][0]
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hmac.new(
            key,
            struct.pack(">I", counter) + label + context_u + context_v + struct.pack(">I", bits),
            digest,
        ).digest()
        counter += 1
    out = out[: (bits + 7) // 8]
    if bits % 8:
        out = bytes([out[0] & ((1 << (bits % 8)) - 1)]) + out[1:]
    return out


def make_credential(ek_public_key, ak_name, secret):
    """TPM2_MakeCredential done in software (Part 1, 24): returns
    (credential_blob, encrypted_secret), the contents of TPM2B_ID_OBJECT
    (u16 size of the HMAC || HMAC || encIdentity) and of
    TPM2B_ENCRYPTED_SECRET, without their TPM2B sizes. Only the TPM holding
    the EK's private key and a loaded object named `ak_name` recovers
    `secret` with TPM2_ActivateCredential.

    The EK must be RSA 2048 made from the TCG default EK template (nameAlg
    SHA-256, AES-128-CFB): the certificate does not carry the template, and
    these are what the TPM uses to unwrap."""
    if not isinstance(ek_public_key, rsa.RSAPublicKey):
        raise AttestationRefused(
            "the EK is not an RSA key: only the RSA 2048 EK (TCG default template L-1) is supported"
        )
    if ek_public_key.key_size != 2048:
        raise AttestationRefused(
            f"the EK is RSA {ek_public_key.key_size}: only RSA 2048 (TCG default template L-1) is supported"
        )
    parse_name(ak_name, "the AK name")
    # TPM2_MakeCredential: the credential is at most the EK nameAlg's digest size.
    if not 1 <= len(secret) <= 32:
        raise AttestationRefused(f"the credential is {len(secret)} bytes, not 1 to 32")
    seed = os.urandom(32)
    encrypted_secret = ek_public_key.encrypt(
        seed,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"IDENTITY\0"),
    )
    sym_key = kdfa(ALG_SHA256, seed, b"STORAGE", ak_name, b"", 128)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(struct.pack(">H", len(secret)) + secret) + encryptor.finalize()
    hmac_key = kdfa(ALG_SHA256, seed, b"INTEGRITY", b"", b"", 256)
    outer_hmac = hmac.new(hmac_key, enc_identity + ak_name, "sha256").digest()
    return struct.pack(">H", len(outer_hmac)) + outer_hmac + enc_identity, encrypted_secret


def seal_certificate(secret, ak_name, pem_chain):
    """AES-256-GCM of the AK certificate chain under the credential:
    (nonce, ciphertext||tag), the AK name as associated data."""
    if len(secret) != 32:
        raise AttestationRefused(f"the credential is {len(secret)} bytes, AES-256 needs 32")
    nonce = os.urandom(12)
    return nonce, AESGCM(secret).encrypt(nonce, pem_chain, ak_name)


def open_certificate(secret, ak_name, nonce, ciphertext):
    """The inverse of seal_certificate (what `prov-agent attest activate` does)."""
    try:
        return AESGCM(secret).decrypt(nonce, ciphertext, ak_name)
    except (InvalidTag, ValueError) as e:
        raise AttestationRefused(f"encryptedCertificate does not open with this credential ({type(e).__name__})")


# --- TPM2_Certify ------------------------------------------------------------


@dataclass(frozen=True)
class Attest:
    """A parsed TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY."""

    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: int
    firmware_version: int
    name: bytes
    qualified_name: bytes


def parse_certify_attest(b):
    r = _Reader(b, "TPMS_ATTEST")
    magic = r.u32("magic")
    if magic != TPM_GENERATED_VALUE:
        raise AttestationRefused(
            f"TPMS_ATTEST magic is 0x{magic:08x}, not TPM_GENERATED_VALUE 0xff544347: a TPM did not make it"
        )
    type_ = r.u16("type")
    if type_ != TPM_ST_ATTEST_CERTIFY:
        raise AttestationRefused(f"TPMS_ATTEST type is 0x{type_:04x}, not TPM_ST_ATTEST_CERTIFY 0x8017")
    signer = r.tpm2b("qualifiedSigner", 2 + 64)
    extra = r.tpm2b("extraData", 2 + 64)
    clock = r.u64("clockInfo.clock")
    reset = r.u32("clockInfo.resetCount")
    restart = r.u32("clockInfo.restartCount")
    safe = r.u8("clockInfo.safe")
    firmware = r.u64("firmwareVersion")
    name = r.tpm2b("attested.certify.name", 2 + 64)
    qualified = r.tpm2b("attested.certify.qualifiedName", 2 + 64)
    r.end()
    return Attest(signer, extra, clock, reset, restart, safe, firmware, name, qualified)


def verify_signature(signature, message, public_key, what="TPMT_SIGNATURE"):
    """Verifies a TPMT_SIGNATURE over `message` (the TPM signed its digest
    with the hash the signature names): ECDSA, RSASSA or RSAPSS, SHA-256 or
    stronger."""
    r = _Reader(signature, what)
    sig_alg = r.u16("sigAlg")
    if sig_alg not in (ALG_ECDSA, ALG_RSASSA, ALG_RSAPSS):
        raise AttestationRefused(f"{what}: sigAlg {alg_name(sig_alg)} is not ECDSA, RSASSA or RSAPSS")
    hash_alg = r.u16("hash")
    if hash_alg not in STRONG_HASHES:
        raise AttestationRefused(f"{what}: hash {alg_name(hash_alg)} is not SHA-256, SHA-384 or SHA-512")
    h = HASHES[hash_alg][1]()
    if sig_alg == ALG_ECDSA:
        sig_r = r.tpm2b("signatureR", 66)
        sig_s = r.tpm2b("signatureS", 66)
        r.end()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise AttestationRefused(f"{what} is ECDSA but the attestation key is not an EC key")
        der = encode_dss_signature(int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big"))
        verify = lambda: public_key.verify(der, message, ec.ECDSA(h))  # noqa: E731
    else:
        sig = r.tpm2b("sig", 512)
        r.end()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise AttestationRefused(f"{what} is {alg_name(sig_alg)} but the attestation key is not an RSA key")
        if sig_alg == ALG_RSASSA:
            pad = padding.PKCS1v15()
        else:
            # TPMs differ in the salt length they use (the digest size, or
            # the largest that fits): accept any, as the signature tells.
            pad = padding.PSS(mgf=padding.MGF1(h), salt_length=padding.PSS.AUTO)
        verify = lambda: public_key.verify(sig, message, pad, h)  # noqa: E731
    try:
        verify()
    except InvalidSignature:
        raise AttestationRefused(
            f"{what} ({alg_name(sig_alg)}/{alg_name(hash_alg)}) does not verify with the attestation key"
        )


def verify_certify(attest, signature, ak_public_key, device_public, qualifying_data):
    """Checks a TPM2_Certify of a device key by an attestation key and
    returns the device key's parsed public area. The AK must be a restricted
    signing key (its certificate says so: the CA certifies only those): a
    restricted key signs nothing that starts with TPM_GENERATED_VALUE unless
    the TPM made it, so a valid signature over a TPMS_ATTEST means the TPM
    holding the AK reports that it holds the certified key."""
    device = parse_public(device_public, "TpmDevicePublic (TPMT_PUBLIC)")
    check_name_alg(device, "the device key")
    verify_signature(signature, attest, ak_public_key)
    info = parse_certify_attest(attest)
    if not hmac.compare_digest(info.extra_data, qualifying_data):
        raise AttestationRefused(
            "the attestation's qualifying data (extraData) is not the expected value "
            f"{qualifying_data[:80]!r}: it was made for another request ({info.extra_data[:80]!r})"
        )
    if info.name != device.name():
        raise AttestationRefused(
            f"the attestation certifies the key named {info.name.hex()}, not the given public "
            f"area (named {device.name().hex()})"
        )
    missing = device.missing(FIXED_TPM, FIXED_PARENT, SENSITIVE_DATA_ORIGIN, SIGN)
    if missing:
        raise AttestationRefused(
            f"the device key lacks the attributes {', '.join(missing)} (it has "
            f"0x{device.object_attributes:08x}): it was not made in the TPM to stay there, "
            "or it cannot sign"
        )
    return device


# --- keys and certificates ---------------------------------------------------


def same_public_key(a, b):
    """Whether two cryptography public keys are the same key."""
    if isinstance(a, rsa.RSAPublicKey) and isinstance(b, rsa.RSAPublicKey):
        return a.public_numbers() == b.public_numbers()
    if isinstance(a, ec.EllipticCurvePublicKey) and isinstance(b, ec.EllipticCurvePublicKey):
        return a.curve.name == b.curve.name and a.public_numbers() == b.public_numbers()
    return False


def public_matches_certificate(public, certificate_pem):
    """Whether the TPM public area's key is the key of the PEM certificate."""
    if isinstance(certificate_pem, str):
        certificate_pem = certificate_pem.encode()
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
        cert_key = cert.public_key()
    except (ValueError, TypeError) as e:
        raise AttestationRefused(f"the certificate is not a PEM X.509 certificate ({e})")
    return same_public_key(public.public_key(), cert_key)


def spki_der(public_key):
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def subject_serial_number(cert, required=True):
    """The subject's serialNumber attribute (2.5.4.5): exactly one (or
    None if there is none and it is not required)."""
    values = cert.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)
    if not values and not required:
        return None
    if len(values) != 1:
        raise AttestationRefused(
            f"the certificate's subject has {len(values)} serialNumber attributes, not one"
        )
    return values[0].value


def load_der_certificate(der, what):
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise AttestationRefused(f"{what} is not a DER X.509 certificate ({e})")


def load_certificates(pem, what):
    """Every certificate of a PEM file's content, at least one."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise AttestationRefused(f"{what} holds no PEM certificate ({e})")
    return certs


def _eku_of_ek(policy, cert, eku):
    # Absent: allowed (older EK certificates have none). Present: it must say EK.
    if eku is not None and EK_CERTIFICATE_EKU not in eku:
        raise ValueError("the extendedKeyUsage does not include tcg-kp-EKCertificate (2.23.133.8.1)")


def _ku_of_ak(policy, cert, ku):
    if ku is not None and not ku.digital_signature:
        raise ValueError("keyUsage lacks digitalSignature")


def _ek_policy():
    """The WebPKI end-entity policy, relaxed where TCG EK certificates differ.
    TCG EK Credential Profile 2.0: the subject may be empty and the SAN
    (TPM manufacturer, model, version as a directoryName) is then critical;
    swtpm's localca sets the subject CN=unknown AND marks the SAN critical,
    which WebPKI refuses ("subjectAltName MUST NOT be critical when subject is
    nonempty"); the EKU is tcg-kp-EKCertificate, not clientAuth (WebPKI's
    client verifier refuses it: "required EKU not found"). The certificate
    also carries a subjectDirectoryAttributes (TPM spec version), which
    cryptography keeps as an UnrecognizedExtension (non-critical: fine).
    Parsing itself needs nothing special (cryptography 50)."""
    ee = verification.ExtensionPolicy.webpki_defaults_ee()
    ee = ee.may_be_present(x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None)
    ee = ee.may_be_present(x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, _eku_of_ek)
    return ee


def _ak_policy():
    """The WebPKI end-entity policy for an attestation key certificate: any
    SAN (a TCG IAK certificate has a critical one), any EKU, digitalSignature
    if keyUsage is present."""
    ee = verification.ExtensionPolicy.webpki_defaults_ee()
    ee = ee.may_be_present(x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None)
    ee = ee.may_be_present(x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, None)
    ee = ee.may_be_present(x509.KeyUsage, verification.Criticality.AGNOSTIC, _ku_of_ak)
    return ee


def verify_chain(cert, anchors, now, kind, intermediates=()):
    """Checks that `cert` chains (signatures, validity at `now`, CA
    constraints) to one of `anchors`; kind is "ek" or "ak" (which end-entity
    policy). Returns the chain, leaf first."""
    if not anchors:
        raise AttestationRefused("no CA certificate is configured")
    ee = {"ek": _ek_policy, "ak": _ak_policy}[kind]()
    if isinstance(now, (int, float)):
        now = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    try:
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(list(anchors)))
            .time(now)
            .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
            .build_client_verifier()
        )
        return verifier.verify(cert, list(intermediates)).chain
    except verification.VerificationError as e:
        raise AttestationRefused(
            f"the certificate (subject {cert.subject.rfc4514_string()!r}, issuer "
            f"{cert.issuer.rfc4514_string()!r}) does not chain to a configured CA: {e}"
        )


def b64(data):
    return base64.b64encode(data).decode()


def unb64(text, what):
    if not isinstance(text, str):
        raise AttestationRefused(f"{what} is not a string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise AttestationRefused(f"{what} is not base64")
