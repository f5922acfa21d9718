/**
 * The little X.509 the product needs for the site-to-site stream (R-POL-7, certificate mode): certificate
 * signing requests (PKCS #10, RFC 2986) made by agents and read by the control plane, and certificates (RFC 5280)
 * the control plane's certificate authority issues. Only DER building and reading is here; keys and signatures
 * are node:crypto's. An agent's identity is the URI `urn:osr:agent:<agent id>` in a certificate's subject
 * alternative names (and its id as the common name).
 */
import { createHash, createPublicKey, randomBytes, sign, verify } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { OsrError } from './errors.js';

// ---- DER writing ------------------------------------------------------------------------------

function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

function tlv(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), derLength(body.length), body]);
}

const seq = (...c: Buffer[]): Buffer => tlv(0x30, ...c);
const set = (...c: Buffer[]): Buffer => tlv(0x31, ...c);
const octets = (b: Buffer): Buffer => tlv(0x04, b);
const bits = (b: Buffer, unused = 0): Buffer => tlv(0x03, Buffer.from([unused]), b);
const utf8 = (s: string): Buffer => tlv(0x0c, Buffer.from(s, 'utf8'));
const TRUE = tlv(0x01, Buffer.from([0xff]));

function oid(dotted: string): Buffer {
  const arcs = dotted.split('.').map(Number);
  const out: number[] = [40 * arcs[0]! + arcs[1]!];
  for (const arc of arcs.slice(2)) {
    const chunk: number[] = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) chunk.unshift(0x80 | (v & 0x7f));
    out.push(...chunk);
  }
  return tlv(0x06, Buffer.from(out));
}

/** A non-negative INTEGER from big-endian magnitude bytes. */
function unsignedInt(magnitude: Buffer): Buffer {
  let i = 0;
  while (i < magnitude.length - 1 && magnitude[i] === 0) i++;
  const m = magnitude.subarray(i);
  return tlv(0x02, (m[0]! & 0x80) !== 0 ? Buffer.concat([Buffer.from([0]), m]) : m);
}

function derTime(d: Date): Buffer {
  const p = (n: number, w = 2): string => String(n).padStart(w, '0');
  const rest = `${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`;
  const y = d.getUTCFullYear();
  // RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
  return y < 2050 ? tlv(0x17, Buffer.from(p(y % 100) + rest)) : tlv(0x18, Buffer.from(p(y, 4) + rest));
}

const OID = {
  ecPublicKey: '1.2.840.10045.2.1',
  p256: '1.2.840.10045.3.1.7',
  p384: '1.3.132.0.34',
  rsaEncryption: '1.2.840.113549.1.1.1',
  ecdsaSha256: '1.2.840.10045.4.3.2',
  ecdsaSha384: '1.2.840.10045.4.3.3',
  ecdsaSha512: '1.2.840.10045.4.3.4',
  rsaSha256: '1.2.840.113549.1.1.11',
  rsaSha384: '1.2.840.113549.1.1.12',
  rsaSha512: '1.2.840.113549.1.1.13',
  commonName: '2.5.4.3',
  extensionRequest: '1.2.840.113549.1.9.14',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;

const SIGNATURE_HASH: Readonly<Record<string, string>> = {
  [OID.ecdsaSha256]: 'sha256',
  [OID.ecdsaSha384]: 'sha384',
  [OID.ecdsaSha512]: 'sha512',
  [OID.rsaSha256]: 'sha256',
  [OID.rsaSha384]: 'sha384',
  [OID.rsaSha512]: 'sha512',
};

function nameWithCommonName(cn: string): Buffer {
  return seq(set(seq(oid(OID.commonName), utf8(cn))));
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return critical ? seq(oid(id), TRUE, octets(value)) : seq(oid(id), octets(value));
}

function sanUris(uris: readonly string[]): Buffer {
  return seq(...uris.map((u) => tlv(0x86, Buffer.from(u, 'ascii'))));
}

/** The signature algorithm and hash for a signing key: ECDSA or RSA PKCS #1 v1.5, SHA-256 (SHA-384 on P-384). */
function signatureFor(key: KeyObject): { algorithm: Buffer; hash: string } {
  if (key.asymmetricKeyType === 'ec') {
    const p384 = key.asymmetricKeyDetails?.namedCurve === 'secp384r1';
    return {
      algorithm: seq(oid(p384 ? OID.ecdsaSha384 : OID.ecdsaSha256)),
      hash: p384 ? 'sha384' : 'sha256',
    };
  }
  if (key.asymmetricKeyType === 'rsa')
    return { algorithm: seq(oid(OID.rsaSha256), tlv(0x05)), hash: 'sha256' };
  throw new OsrError('VALIDATION_FAILED', `cannot sign with a ${String(key.asymmetricKeyType)} key`);
}

function signed(body: Buffer, key: KeyObject): Buffer {
  const s = signatureFor(key);
  return seq(body, s.algorithm, bits(sign(s.hash, body, key)));
}

function pem(label: string, der: Buffer): string {
  const b64 = der.toString('base64').replace(/(.{64})/g, '$1\n');
  return `-----BEGIN ${label}-----\n${b64.replace(/\n$/, '')}\n-----END ${label}-----\n`;
}

// ---- DER reading ------------------------------------------------------------------------------

interface Der {
  tag: number;
  /** The whole element (tag, length, content). */
  raw: Buffer;
  content: Buffer;
}

function readDer(buf: Buffer, at = 0): Der {
  if (at + 2 > buf.length) throw new RangeError('truncated DER element');
  const tag = buf[at]!;
  if ((tag & 0x1f) === 0x1f) throw new RangeError('multi-byte DER tags are not supported');
  let len = buf[at + 1]!;
  let head = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) throw new RangeError('indefinite or oversized DER length');
    if (at + 2 + n > buf.length) throw new RangeError('truncated DER length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[at + 2 + i]!;
    head += n;
  }
  if (at + head + len > buf.length) throw new RangeError('DER element runs past its container');
  return { tag, raw: buf.subarray(at, at + head + len), content: buf.subarray(at + head, at + head + len) };
}

function children(node: Der): Der[] {
  const out: Der[] = [];
  for (let at = 0; at < node.content.length;) {
    const c = readDer(node.content, at);
    out.push(c);
    at += c.raw.length;
  }
  return out;
}

function expect(node: Der | undefined, tag: number, what: string): Der {
  if (node === undefined || node.tag !== tag) throw new RangeError(`${what} is missing or malformed`);
  return node;
}

function readOid(node: Der): string {
  const b = expect(node, 0x06, 'object identifier').content;
  if (b.length === 0) throw new RangeError('empty object identifier');
  const arcs = [Math.floor(b[0]! / 40), b[0]! % 40];
  let v = 0;
  for (const byte of b.subarray(1)) {
    v = v * 128 + (byte & 0x7f);
    if ((byte & 0x80) === 0) {
      arcs.push(v);
      v = 0;
    }
  }
  return arcs.join('.');
}

function readString(node: Der): string {
  // UTF8String, PrintableString, IA5String, T61String (read as latin1), BMPString.
  if (node.tag === 0x1e) return Buffer.from(node.content).swap16().toString('utf16le');
  if (node.tag === 0x14) return node.content.toString('latin1');
  if ([0x0c, 0x13, 0x16].includes(node.tag)) return node.content.toString('utf8');
  throw new RangeError(`unsupported string type ${node.tag}`);
}

function commonNamesOf(name: Der): string[] {
  const out: string[] = [];
  for (const rdn of children(expect(name, 0x30, 'name'))) {
    for (const atv of children(expect(rdn, 0x31, 'relative distinguished name'))) {
      const [type, value] = children(expect(atv, 0x30, 'attribute'));
      if (readOid(type!) === OID.commonName) out.push(readString(value!));
    }
  }
  return out;
}

// ---- certificate signing requests ---------------------------------------------------------------

/** What a certificate signing request asks for, read and checked by {@link parseCertificateRequest}. */
export interface CertificateRequest {
  /** The subject's common name, if it has one. */
  commonName: string | undefined;
  /** Subject alternative names requested, by kind. */
  uris: string[];
  dnsNames: string[];
  ipAddresses: string[];
  /** Requested alternative names of other kinds (e-mail, directory names, …). */
  otherNames: number;
  /** The requester's public key (its signature on the request proves it holds the private key). */
  publicKey: KeyObject;
  /** e.g. `EC P-256`, `RSA 2048`. */
  keyDescription: string;
}

/** Keys the product accepts for agent certificates: EC P-256 or P-384, RSA of 2048 to 8192 bits. */
export function checkKeyStrength(key: KeyObject): string {
  const type = key.asymmetricKeyType;
  const d = key.asymmetricKeyDetails ?? {};
  if (type === 'ec' && (d.namedCurve === 'prime256v1' || d.namedCurve === 'secp384r1')) {
    return d.namedCurve === 'prime256v1' ? 'EC P-256' : 'EC P-384';
  }
  if (type === 'rsa' && (d.modulusLength ?? 0) >= 2048 && (d.modulusLength ?? 0) <= 8192) {
    return `RSA ${d.modulusLength}`;
  }
  const what =
    type === 'ec'
      ? `EC ${d.namedCurve ?? '?'}`
      : type === 'rsa'
        ? `RSA ${d.modulusLength ?? '?'}`
        : String(type);
  throw new OsrError(
    'CERTIFICATE_REQUEST_INVALID',
    `the request's key (${what}) is not accepted: use EC P-256 or P-384, or RSA of 2048–8192 bits`,
    { details: { key: what } },
  );
}

function pemBody(text: string, label: string): Buffer {
  const m = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`).exec(text);
  if (m === null) throw new RangeError(`not a PEM ${label}`);
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
}

type RequestedNames = Pick<CertificateRequest, 'uris' | 'dnsNames' | 'ipAddresses' | 'otherNames'>;

function readSubjectAltNames(value: Buffer, into: RequestedNames): void {
  for (const gn of children(expect(readDer(value), 0x30, 'subject alternative names'))) {
    if (gn.tag === 0x86) into.uris.push(gn.content.toString('latin1'));
    else if (gn.tag === 0x82) into.dnsNames.push(gn.content.toString('latin1'));
    else if (gn.tag === 0x87) into.ipAddresses.push([...gn.content].join('.'));
    else into.otherNames++;
  }
}

/**
 * Reads a PEM certificate signing request and checks it: well-formed DER, a signature (ECDSA or RSA with
 * SHA-2) that verifies with the request's own key — so the requester holds that key — and a key of an accepted
 * type and size ({@link checkKeyStrength}). Anything else is `CERTIFICATE_REQUEST_INVALID`.
 */
export function parseCertificateRequest(text: string): CertificateRequest {
  let der: Buffer;
  try {
    der = pemBody(text, 'CERTIFICATE REQUEST');
  } catch {
    throw new OsrError(
      'CERTIFICATE_REQUEST_INVALID',
      'not a PEM certificate request (BEGIN CERTIFICATE REQUEST)',
    );
  }
  let req: Omit<CertificateRequest, 'keyDescription'>;
  let info: Der;
  let algorithm: string;
  let signature: Buffer;
  try {
    const top = readDer(der);
    if (top.raw.length !== der.length) throw new RangeError('bytes after the request');
    const [infoNode, algNode, sigNode] = children(expect(top, 0x30, 'request'));
    info = expect(infoNode, 0x30, 'request info');
    algorithm = readOid(children(expect(algNode, 0x30, 'signature algorithm'))[0]!);
    const sig = expect(sigNode, 0x03, 'signature').content;
    if (sig[0] !== 0) throw new RangeError('signature with unused bits');
    signature = sig.subarray(1);
    const [version, subject, spki, attributes] = children(info);
    if (expect(version, 0x02, 'version').content.toString('hex') !== '00')
      throw new RangeError('not a v1 request');
    let publicKey: KeyObject;
    try {
      publicKey = createPublicKey({ key: expect(spki, 0x30, 'public key').raw, format: 'der', type: 'spki' });
    } catch {
      throw new RangeError('the public key cannot be read');
    }
    const cns = commonNamesOf(subject!);
    if (cns.length > 1) throw new RangeError('more than one common name');
    req = { commonName: cns[0], uris: [], dnsNames: [], ipAddresses: [], otherNames: 0, publicKey };
    for (const attr of attributes === undefined ? [] : children(expect(attributes, 0xa0, 'attributes'))) {
      const [type, values] = children(expect(attr, 0x30, 'attribute'));
      if (readOid(type!) !== OID.extensionRequest) continue;
      for (const exts of children(expect(values, 0x31, 'attribute values'))) {
        for (const ext of children(expect(exts, 0x30, 'extensions'))) {
          const parts = children(expect(ext, 0x30, 'extension'));
          if (readOid(parts[0]!) !== OID.subjectAltName) continue;
          readSubjectAltNames(expect(parts[parts.length - 1], 0x04, 'extension value').content, req);
        }
      }
    }
  } catch (err) {
    if (err instanceof OsrError) throw err;
    throw new OsrError(
      'CERTIFICATE_REQUEST_INVALID',
      `the certificate request is malformed: ${(err as Error).message}`,
    );
  }
  const hash = SIGNATURE_HASH[algorithm];
  if (hash === undefined) {
    throw new OsrError(
      'CERTIFICATE_REQUEST_INVALID',
      `the request is signed with an unsupported algorithm (${algorithm}); use ECDSA or RSA with SHA-256`,
      { details: { algorithm } },
    );
  }
  const keyDescription = checkKeyStrength(req.publicKey);
  if (!verify(hash, info.raw, req.publicKey, signature)) {
    throw new OsrError(
      'CERTIFICATE_REQUEST_INVALID',
      "the request's signature does not verify with its own key (it was altered, or not made with that key)",
    );
  }
  return { ...req, keyDescription };
}

/** Makes a PEM certificate signing request for `privateKey` (P-256/P-384 EC or RSA). */
export function createCertificateRequest(
  privateKey: KeyObject,
  subject: { commonName: string; uris?: readonly string[] },
): string {
  const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  const uris = subject.uris ?? [];
  const attributes =
    uris.length === 0
      ? tlv(0xa0)
      : tlv(
          0xa0,
          seq(oid(OID.extensionRequest), set(seq(extension(OID.subjectAltName, false, sanUris(uris))))),
        );
  const info = seq(tlv(0x02, Buffer.from([0])), nameWithCommonName(subject.commonName), spki, attributes);
  return pem('CERTIFICATE REQUEST', signed(info, privateKey));
}

// ---- certificates -----------------------------------------------------------------------------

/** What {@link issueCertificate} puts into a certificate. */
export interface CertificateSpec {
  commonName: string;
  /** URI subject alternative names. */
  uris?: readonly string[];
  publicKey: KeyObject;
  notBefore: Date;
  notAfter: Date;
  /** A CA certificate (may sign certificates, none below it) instead of an end entity (TLS client and server). */
  isCa?: boolean;
}

/** The signer of a certificate: its certificate (PEM; omit for a self-signed one) and private key. */
export interface CertificateIssuer {
  certificatePem?: string;
  privateKey: KeyObject;
}

function keyIdentifier(spkiDer: Buffer): Buffer {
  // RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
  const bitString = children(readDer(spkiDer))[1]!;
  return createHash('sha1').update(bitString.content.subarray(1)).digest();
}

/** Parts of a certificate: its subject (DER) and key id, to issue below it. */
function issuerParts(certificatePem: string): { subject: Buffer; keyId: Buffer } {
  const tbs = children(readDer(pemBody(certificatePem, 'CERTIFICATE')))[0]!;
  const f = children(tbs);
  const offset = f[0]!.tag === 0xa0 ? 1 : 0;
  return { subject: f[offset + 4]!.raw, keyId: keyIdentifier(f[offset + 5]!.raw) };
}

/**
 * Issues an X.509 v3 certificate (PEM) signed by `issuer`: random 127-bit serial, the subject's common name and
 * URIs, key identifiers, and either CA constraints (keyCertSign, path length 0) or an end entity's (digital
 * signature; TLS server and client).
 */
export function issueCertificate(spec: CertificateSpec, issuer: CertificateIssuer): string {
  const spki = spec.publicKey.export({ type: 'spki', format: 'der' });
  const subject = nameWithCommonName(spec.commonName);
  const own = keyIdentifier(spki);
  const parent =
    issuer.certificatePem === undefined
      ? {
          subject,
          keyId: keyIdentifier(createPublicKey(issuer.privateKey).export({ type: 'spki', format: 'der' })),
        }
      : issuerParts(issuer.certificatePem);
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x40;
  const exts = [
    spec.isCa === true
      ? extension(OID.basicConstraints, true, seq(TRUE, tlv(0x02, Buffer.from([0]))))
      : extension(OID.basicConstraints, true, seq()),
    // keyUsage bits: digitalSignature = bit 0; keyCertSign = bit 5, cRLSign = bit 6.
    spec.isCa === true
      ? extension(OID.keyUsage, true, bits(Buffer.from([0x06]), 1))
      : extension(OID.keyUsage, true, bits(Buffer.from([0x80]), 7)),
    ...(spec.isCa === true
      ? []
      : [extension(OID.extKeyUsage, false, seq(oid(OID.serverAuth), oid(OID.clientAuth)))]),
    ...((spec.uris ?? []).length > 0 ? [extension(OID.subjectAltName, false, sanUris(spec.uris ?? []))] : []),
    extension(OID.subjectKeyIdentifier, false, octets(own)),
    extension(OID.authorityKeyIdentifier, false, seq(tlv(0x80, parent.keyId))),
  ];
  const tbs = seq(
    tlv(0xa0, tlv(0x02, Buffer.from([2]))),
    unsignedInt(serial),
    signatureFor(issuer.privateKey).algorithm,
    parent.subject,
    seq(derTime(spec.notBefore), derTime(spec.notAfter)),
    subject,
    spki,
    tlv(0xa3, seq(...exts)),
  );
  return pem('CERTIFICATE', signed(tbs, issuer.privateKey));
}

// ---- agent identity ---------------------------------------------------------------------------

/** The URI an agent's certificate carries as its identity. */
export function agentIdentityUri(agentId: string): string {
  return `urn:osr:agent:${agentId}`;
}

/**
 * The agent ids a certificate names, from node's `subjectaltname` string (`URI:urn:osr:agent:…, DNS:…`) as
 * `X509Certificate.subjectAltName` and `TLSSocket.getPeerCertificate().subjectaltname` give it.
 */
export function agentIdsIn(subjectAltName: string | undefined): string[] {
  if (subjectAltName === undefined) return [];
  const out: string[] = [];
  for (const m of subjectAltName.matchAll(/(?:^|, )URI:urn:osr:agent:([A-Za-z0-9._-]+)(?=, |$)/g))
    out.push(m[1]!);
  return out;
}
