/** The control plane's certificate authority and replication secret (one row). */
import type { CertificateAuthorityRepository, StoredAuthority } from '../store.js';
import type { CertificateAuthorityTable } from '../schema.js';
import type { StoreContext } from './context.js';

const ID = 'default';

function toAuthority(r: CertificateAuthorityTable): StoredAuthority {
  return {
    certificatePem: r.certificate_pem,
    privateKeyPem: r.private_key_pem,
    replicationSecret: r.replication_secret,
    createdAt: r.created_at,
  };
}

/** `CertificateAuthorityRepository` over Kysely; `ensure` is an insert that loses quietly to an existing row. */
export class KyselyCertificateAuthorityRepository implements CertificateAuthorityRepository {
  constructor(private readonly ctx: StoreContext) {}

  async find(): Promise<StoredAuthority | undefined> {
    const r = await this.ctx.db
      .selectFrom('certificate_authority')
      .selectAll()
      .where('id', '=', ID)
      .executeTakeFirst();
    return r && toAuthority(r);
  }

  async ensure(candidate: StoredAuthority): Promise<StoredAuthority> {
    await this.ctx.db
      .insertInto('certificate_authority')
      .values({
        id: ID,
        certificate_pem: candidate.certificatePem,
        private_key_pem: candidate.privateKeyPem,
        replication_secret: candidate.replicationSecret,
        created_at: candidate.createdAt,
      })
      .onConflict((oc) => oc.column('id').doNothing())
      .execute();
    const stored = await this.find();
    if (stored === undefined)
      throw new Error('the certificate authority row vanished right after its insert');
    return stored;
  }
}
