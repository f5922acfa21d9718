/** Registration keys (R-INF-2): only the secret's hash is stored. */
import { notFound } from '../../domain/errors.js';
import type { RegistrationKey } from '../../domain/model.js';
import type { New, RegistrationKeyRepository } from '../store.js';
import type { RegistrationKeysTable } from '../schema.js';
import { guard, isoTime, newId, type StoreContext } from './context.js';

function toKey(r: RegistrationKeysTable): RegistrationKey {
  return {
    id: r.id,
    vaultId: r.vault_id,
    siteId: r.site_id,
    secretHash: r.secret_hash,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
  };
}

/** `RegistrationKeyRepository` over Kysely. */
export class KyselyRegistrationKeyRepository implements RegistrationKeyRepository {
  constructor(private readonly ctx: StoreContext) {}

  async create(k: New<RegistrationKey>): Promise<RegistrationKey> {
    const row: RegistrationKeysTable = {
      id: newId(k.id),
      vault_id: k.vaultId,
      site_id: k.siteId,
      secret_hash: k.secretHash,
      created_at: isoTime(k.createdAt, 'createdAt'),
      expires_at: isoTime(k.expiresAt, 'expiresAt'),
    };
    await guard(this.ctx, { kind: 'registration key', key: row.id, op: 'write' }, () =>
      this.ctx.db.insertInto('registration_keys').values(row).execute(),
    );
    return toKey(row);
  }

  async findBySecretHash(secretHash: string): Promise<RegistrationKey | undefined> {
    const r = await this.ctx.db
      .selectFrom('registration_keys')
      .selectAll()
      .where('secret_hash', '=', secretHash)
      .executeTakeFirst();
    return r && toKey(r);
  }

  async listBySite(siteId: string): Promise<RegistrationKey[]> {
    const rows = await this.ctx.db
      .selectFrom('registration_keys')
      .selectAll()
      .where('site_id', '=', siteId)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(toKey);
  }

  async delete(id: string): Promise<void> {
    const r = await this.ctx.db.deleteFrom('registration_keys').where('id', '=', id).executeTakeFirst();
    if (Number(r.numDeletedRows) === 0) throw notFound('registration key', id);
  }
}
