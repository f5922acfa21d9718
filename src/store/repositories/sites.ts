/** Sites [fabrics]: unique name per vault. Deleting a site deletes its keys, agents and inventory. */
import { notFound } from '../../domain/errors.js';
import type { Site, SiteKind } from '../../domain/model.js';
import type { ListOptions, New, Page, SiteRepository } from '../store.js';
import type { SitesTable } from '../schema.js';
import { countOf, guard, newId, nowIso, paging, pickByIdOrName, type StoreContext } from './context.js';

function toSite(r: SitesTable): Site {
  return { id: r.id, vaultId: r.vault_id, name: r.name, kind: r.kind as SiteKind, createdAt: r.created_at };
}

/** `SiteRepository` over Kysely. */
export class KyselySiteRepository implements SiteRepository {
  constructor(private readonly ctx: StoreContext) {}

  async create(s: New<Site, 'createdAt'>): Promise<Site> {
    const row: SitesTable = {
      id: newId(s.id),
      vault_id: s.vaultId,
      name: s.name,
      kind: s.kind,
      created_at: nowIso(this.ctx),
    };
    await guard(this.ctx, { kind: 'site', key: s.name, op: 'write' }, () =>
      this.ctx.db.insertInto('sites').values(row).execute(),
    );
    return toSite(row);
  }

  async find(vaultId: string, idOrName: string): Promise<Site | undefined> {
    const rows = await this.ctx.db
      .selectFrom('sites')
      .selectAll()
      .where('vault_id', '=', vaultId)
      .where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)]))
      .execute();
    const r = pickByIdOrName(rows, idOrName);
    return r && toSite(r);
  }

  async get(vaultId: string, idOrName: string): Promise<Site> {
    const s = await this.find(vaultId, idOrName);
    if (s === undefined) throw notFound('site', idOrName);
    return s;
  }

  async getById(id: string): Promise<Site> {
    const r = await this.ctx.db.selectFrom('sites').selectAll().where('id', '=', id).executeTakeFirst();
    if (r === undefined) throw notFound('site', id);
    return toSite(r);
  }

  async list(vaultId: string, opts?: ListOptions): Promise<Page<Site>> {
    const { limit, offset } = paging(opts);
    const q = this.ctx.db.selectFrom('sites').where('vault_id', '=', vaultId);
    const [rows, total] = await Promise.all([
      q.selectAll().orderBy('name').limit(limit).offset(offset).execute(),
      q.select((eb) => eb.fn.countAll().as('n')).executeTakeFirst(),
    ]);
    return { items: rows.map(toSite), total: countOf(total) };
  }

  async delete(id: string): Promise<void> {
    const r = await guard(this.ctx, { kind: 'site', key: id, op: 'delete' }, () =>
      this.ctx.db.deleteFrom('sites').where('id', '=', id).executeTakeFirst(),
    );
    if (Number(r.numDeletedRows) === 0) throw notFound('site', id);
  }
}
