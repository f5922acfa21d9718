/** Vaults (R-INF-1). */
import { notFound } from '../../domain/errors.js';
import type { Vault } from '../../domain/model.js';
import type { ListOptions, Page, VaultRepository } from '../store.js';
import type { VaultsTable } from '../schema.js';
import { countOf, guard, newId, nowIso, paging, pickByIdOrName, type StoreContext } from './context.js';

function toVault(r: VaultsTable): Vault {
  return { id: r.id, name: r.name, createdAt: r.created_at };
}

/** `VaultRepository` over Kysely. */
export class KyselyVaultRepository implements VaultRepository {
  constructor(private readonly ctx: StoreContext) {}

  async create(v: { name: string; id?: string }): Promise<Vault> {
    const row: VaultsTable = { id: newId(v.id), name: v.name, created_at: nowIso(this.ctx) };
    await guard(this.ctx, { kind: 'vault', key: v.name, op: 'write' }, () =>
      this.ctx.db.insertInto('vaults').values(row).execute(),
    );
    return toVault(row);
  }

  async find(idOrName: string): Promise<Vault | undefined> {
    const rows = await this.ctx.db
      .selectFrom('vaults')
      .selectAll()
      .where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)]))
      .execute();
    const r = pickByIdOrName(rows, idOrName);
    return r && toVault(r);
  }

  async get(idOrName: string): Promise<Vault> {
    const v = await this.find(idOrName);
    if (v === undefined) throw notFound('vault', idOrName);
    return v;
  }

  async list(opts?: ListOptions): Promise<Page<Vault>> {
    const { limit, offset } = paging(opts);
    const q = this.ctx.db.selectFrom('vaults');
    const [rows, total] = await Promise.all([
      q.selectAll().orderBy('name').limit(limit).offset(offset).execute(),
      q.select((eb) => eb.fn.countAll().as('n')).executeTakeFirst(),
    ]);
    return { items: rows.map(toVault), total: countOf(total) };
  }

  async delete(id: string): Promise<void> {
    const r = await guard(this.ctx, { kind: 'vault', key: id, op: 'delete' }, () =>
      this.ctx.db.deleteFrom('vaults').where('id', '=', id).executeTakeFirst(),
    );
    if (Number(r.numDeletedRows) === 0) throw notFound('vault', id);
  }
}
