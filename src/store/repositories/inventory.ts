/**
 * A site's inventory (R-INF-3): hosts, datastores, networks, machines, as the agent
 * reports them. `replace` reconciles by name in one transaction so rows that stay keep
 * their ids (mappings and items refer to them).
 */
import type { Kysely } from 'kysely';
import { notFound, OsrError } from '../../domain/errors.js';
import type { Datastore, Host, Network, Subnet } from '../../domain/model.js';
import type { InventoryRepository, InventorySnapshot } from '../store.js';
import type { DatastoresTable, HostsTable, NetworksTable } from '../schema.js';
import {
  fromJsonRequired,
  guard,
  inTransaction,
  isoTime,
  newId,
  toJsonRequired,
  type StoreContext,
} from './context.js';
import { machineColumns } from './machines.js';

function toHost(r: HostsTable): Host {
  return {
    id: r.id,
    siteId: r.site_id,
    name: r.name,
    memoryMb: r.memory_mb,
    freeMemoryMb: r.free_memory_mb,
    cpus: r.cpus,
  };
}

function toDatastore(r: DatastoresTable): Datastore {
  return {
    id: r.id,
    siteId: r.site_id,
    name: r.name,
    hostNames: fromJsonRequired<string[]>(r.host_names),
    type: r.type,
  };
}

function toNetwork(r: NetworksTable): Network {
  return { id: r.id, siteId: r.site_id, name: r.name, subnets: fromJsonRequired<Subnet[]>(r.subnets) };
}

type NamedTable = 'hosts' | 'datastores' | 'networks' | 'machines';

/** `InventoryRepository` over Kysely. */
export class KyselyInventoryRepository implements InventoryRepository {
  constructor(private readonly ctx: StoreContext) {}

  async replace(siteId: string, snapshot: InventorySnapshot, now: string): Promise<void> {
    const updatedAt = isoTime(now, 'now');
    await inTransaction(this.ctx, async (tx) => {
      const site = await tx.db
        .selectFrom('sites')
        .select(['id', 'vault_id'])
        .where('id', '=', siteId)
        .executeTakeFirst();
      if (site === undefined) throw notFound('site', siteId);

      const containers = await tx.db
        .selectFrom('containers')
        .select(['id', 'name'])
        .where('site_id', '=', siteId)
        .execute();
      const containerIds = new Map(containers.map((c) => [c.name, c.id]));
      for (const c of snapshot.containers) {
        if (containerIds.has(c.name)) continue;
        const id = newId(undefined);
        await guard(tx, { kind: 'container', key: c.name, op: 'write' }, () =>
          tx.db
            .insertInto('containers')
            .values({ id, vault_id: site.vault_id, site_id: siteId, name: c.name, synced: 1 })
            .execute(),
        );
        containerIds.set(c.name, id);
      }

      await reconcile(tx, 'hosts', siteId, snapshot.hosts, (h) => ({
        memory_mb: h.memoryMb,
        free_memory_mb: h.freeMemoryMb,
        cpus: h.cpus,
      }));
      await reconcile(tx, 'datastores', siteId, snapshot.datastores, (d) => ({
        host_names: toJsonRequired(d.hostNames),
        type: d.type,
      }));
      await reconcile(tx, 'networks', siteId, snapshot.networks, (n) => ({
        subnets: toJsonRequired(n.subnets),
      }));
      await reconcile(tx, 'machines', siteId, snapshot.machines, (m) => {
        let containerId: string | null = null;
        if (m.container !== null) {
          containerId = containerIds.get(m.container) ?? null;
          if (containerId === null) throw notFound('container', m.container);
        }
        const { container: _container, ...rest } = m;
        const {
          site_id: _site,
          name: _name,
          ...cols
        } = machineColumns({
          ...rest,
          siteId,
          containerId,
          updatedAt,
        });
        return cols;
      });
    });
  }

  async hosts(siteId: string): Promise<Host[]> {
    const rows = await this.ctx.db
      .selectFrom('hosts')
      .selectAll()
      .where('site_id', '=', siteId)
      .orderBy('name')
      .execute();
    return rows.map(toHost);
  }

  async datastores(siteId: string): Promise<Datastore[]> {
    const rows = await this.ctx.db
      .selectFrom('datastores')
      .selectAll()
      .where('site_id', '=', siteId)
      .orderBy('name')
      .execute();
    return rows.map(toDatastore);
  }

  async networks(siteId: string): Promise<Network[]> {
    const rows = await this.ctx.db
      .selectFrom('networks')
      .selectAll()
      .where('site_id', '=', siteId)
      .orderBy('name')
      .execute();
    return rows.map(toNetwork);
  }

  async findNetwork(siteId: string, idOrName: string): Promise<Network | undefined> {
    const rows = await this.ctx.db
      .selectFrom('networks')
      .selectAll()
      .where('site_id', '=', siteId)
      .where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)]))
      .execute();
    const r = rows.find((x) => x.id === idOrName) ?? rows.find((x) => x.name === idOrName);
    return r && toNetwork(r);
  }

  async getNetworkById(id: string): Promise<Network> {
    const r = await this.ctx.db.selectFrom('networks').selectAll().where('id', '=', id).executeTakeFirst();
    if (r === undefined) throw notFound('network', id);
    return toNetwork(r);
  }
}

/**
 * Makes the site's rows of `table` equal `wanted` by name: updates rows that stay (ids
 * kept), inserts new ones, deletes the rest.
 */
async function reconcile<W extends { name: string }>(
  tx: StoreContext,
  table: NamedTable,
  siteId: string,
  wanted: W[],
  columns: (w: W) => Record<string, unknown>,
): Promise<void> {
  // The four tables share (id, site_id, name); Kysely cannot type a table chosen at run time.
  const db = tx.db as unknown as Kysely<Record<NamedTable, { id: string; site_id: string; name: string }>>;
  const kind = table.slice(0, -1);
  const existing = await db.selectFrom(table).select(['id', 'name']).where('site_id', '=', siteId).execute();
  const byName = new Map(existing.map((r) => [r.name, r.id]));
  const keep = new Set<string>();
  for (const w of wanted) {
    if (keep.has(w.name)) {
      throw new OsrError('VALIDATION_FAILED', `inventory lists ${kind} '${w.name}' twice`, {
        details: { kind, name: w.name },
      });
    }
    keep.add(w.name);
    const cols = columns(w);
    const id = byName.get(w.name);
    if (id === undefined) {
      await guard(tx, { kind, key: w.name, op: 'write' }, () =>
        db
          .insertInto(table)
          .values({ id: newId(undefined), site_id: siteId, name: w.name, ...cols })
          .execute(),
      );
    } else {
      await guard(tx, { kind, key: w.name, op: 'write' }, () =>
        db.updateTable(table).set(cols).where('id', '=', id).execute(),
      );
    }
  }
  const gone = existing.filter((r) => !keep.has(r.name)).map((r) => r.id);
  if (gone.length > 0) {
    await guard(tx, { kind, key: siteId, op: 'delete' }, () =>
      db.deleteFrom(table).where('id', 'in', gone).execute(),
    );
  }
}
