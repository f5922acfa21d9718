/** Containers [protection containers / clouds]: unique name per site. */
import { notFound } from '../../domain/errors.js';
import type { Container } from '../../domain/model.js';
import type { ContainerRepository, ListOptions, New, Page } from '../store.js';
import type { ContainersTable } from '../schema.js';
import {
  countOf,
  guard,
  newId,
  paging,
  pickByIdOrName,
  toBool,
  toInt,
  type StoreContext,
} from './context.js';

/** Row → model (shared with the inventory repository). */
export function toContainer(r: ContainersTable): Container {
  return { id: r.id, vaultId: r.vault_id, siteId: r.site_id, name: r.name, synced: toBool(r.synced) };
}

/** `ContainerRepository` over Kysely. */
export class KyselyContainerRepository implements ContainerRepository {
  constructor(private readonly ctx: StoreContext) {}

  async create(c: New<Container>): Promise<Container> {
    const row: ContainersTable = {
      id: newId(c.id),
      vault_id: c.vaultId,
      site_id: c.siteId,
      name: c.name,
      synced: toInt(c.synced),
    };
    await guard(this.ctx, { kind: 'container', key: c.name, op: 'write' }, () =>
      this.ctx.db.insertInto('containers').values(row).execute(),
    );
    return toContainer(row);
  }

  async find(siteId: string, idOrName: string): Promise<Container | undefined> {
    const rows = await this.ctx.db
      .selectFrom('containers')
      .selectAll()
      .where('site_id', '=', siteId)
      .where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)]))
      .execute();
    const r = pickByIdOrName(rows, idOrName);
    return r && toContainer(r);
  }

  async getById(id: string): Promise<Container> {
    const r = await this.ctx.db.selectFrom('containers').selectAll().where('id', '=', id).executeTakeFirst();
    if (r === undefined) throw notFound('container', id);
    return toContainer(r);
  }

  async listBySite(siteId: string): Promise<Container[]> {
    const rows = await this.ctx.db
      .selectFrom('containers')
      .selectAll()
      .where('site_id', '=', siteId)
      .orderBy('name')
      .execute();
    return rows.map(toContainer);
  }

  async list(vaultId: string, opts?: ListOptions): Promise<Page<Container>> {
    const { limit, offset } = paging(opts);
    const q = this.ctx.db.selectFrom('containers').where('vault_id', '=', vaultId);
    const [rows, total] = await Promise.all([
      q.selectAll().orderBy('site_id').orderBy('name').limit(limit).offset(offset).execute(),
      q.select((eb) => eb.fn.countAll().as('n')).executeTakeFirst(),
    ]);
    return { items: rows.map(toContainer), total: countOf(total) };
  }

  async update(id: string, patch: Partial<Pick<Container, 'name' | 'synced'>>): Promise<Container> {
    const set: Partial<ContainersTable> = {};
    if (patch.name !== undefined) set.name = patch.name;
    if (patch.synced !== undefined) set.synced = toInt(patch.synced);
    if (Object.keys(set).length > 0) {
      const r = await guard(this.ctx, { kind: 'container', key: patch.name ?? id, op: 'write' }, () =>
        this.ctx.db.updateTable('containers').set(set).where('id', '=', id).executeTakeFirst(),
      );
      if (Number(r.numUpdatedRows) === 0) throw notFound('container', id);
    }
    return this.getById(id);
  }

  async delete(id: string): Promise<void> {
    const r = await guard(this.ctx, { kind: 'container', key: id, op: 'delete' }, () =>
      this.ctx.db.deleteFrom('containers').where('id', '=', id).executeTakeFirst(),
    );
    if (Number(r.numDeletedRows) === 0) throw notFound('container', id);
  }
}
