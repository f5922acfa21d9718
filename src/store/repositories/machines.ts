/** Machines [protectable items] of a site: unique name per site. */
import { notFound, OsrError } from '../../domain/errors.js';
import type {
  GuestToolsState,
  HypervisorType,
  Machine,
  MachineDisk,
  MachineNic,
  MachineOrigin,
  OsType,
  PowerState,
} from '../../domain/model.js';
import type { MachineListFilter, MachineRepository, New, Page } from '../store.js';
import type { MachinesTable } from '../schema.js';
import {
  countOf,
  fromJsonRequired,
  guard,
  inTransaction,
  isoTime,
  newId,
  paging,
  pickByIdOrName,
  toJsonRequired,
  type StoreContext,
} from './context.js';

/** Row → model (shared with the inventory repository). */
export function toMachine(r: MachinesTable): Machine {
  return {
    id: r.id,
    siteId: r.site_id,
    containerId: r.container_id,
    name: r.name,
    hostName: r.host_name,
    cpus: r.cpus,
    memoryMb: r.memory_mb,
    osType: r.os_type as OsType,
    hypervisor: r.hypervisor as HypervisorType,
    powerState: r.power_state as PowerState,
    guestTools: r.guest_tools as GuestToolsState,
    origin: r.origin as MachineOrigin,
    disks: fromJsonRequired<MachineDisk[]>(r.disks),
    nics: fromJsonRequired<MachineNic[]>(r.nics),
    updatedAt: r.updated_at,
  };
}

/** Model → row columns other than id (shared with the inventory repository). */
export function machineColumns(m: Omit<Machine, 'id'>): Omit<MachinesTable, 'id'> {
  return {
    site_id: m.siteId,
    container_id: m.containerId,
    name: m.name,
    host_name: m.hostName,
    cpus: m.cpus,
    memory_mb: m.memoryMb,
    os_type: m.osType,
    hypervisor: m.hypervisor,
    power_state: m.powerState,
    guest_tools: m.guestTools,
    origin: m.origin,
    disks: toJsonRequired(m.disks),
    nics: toJsonRequired(m.nics),
    updated_at: isoTime(m.updatedAt, 'updatedAt'),
  };
}

/** `MachineRepository` over Kysely. */
export class KyselyMachineRepository implements MachineRepository {
  constructor(private readonly ctx: StoreContext) {}

  async find(siteId: string, idOrName: string): Promise<Machine | undefined> {
    const rows = await this.ctx.db
      .selectFrom('machines')
      .selectAll()
      .where('site_id', '=', siteId)
      .where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)]))
      .execute();
    const r = pickByIdOrName(rows, idOrName);
    return r && toMachine(r);
  }

  async findInVault(vaultId: string, ref: string): Promise<Machine | undefined> {
    const slash = ref.indexOf('/');
    const siteName = slash < 0 ? undefined : ref.slice(0, slash);
    const idOrName = slash < 0 ? ref : ref.slice(slash + 1);
    let q = this.ctx.db
      .selectFrom('machines')
      .innerJoin('sites', 'sites.id', 'machines.site_id')
      .selectAll('machines')
      .select('sites.name as site_name')
      .where('sites.vault_id', '=', vaultId)
      .where((eb) => eb.or([eb('machines.id', '=', idOrName), eb('machines.name', '=', idOrName)]));
    if (siteName !== undefined) q = q.where('sites.name', '=', siteName);
    const rows = await q.orderBy('sites.name').execute();
    const byId = rows.find((r) => r.id === idOrName);
    if (byId !== undefined) return toMachine(byId);
    if (rows.length > 1) {
      const sites = rows.map((r) => r.site_name);
      throw new OsrError(
        'AMBIGUOUS_NAME',
        `machine name '${idOrName}' matches machines on sites ${sites.join(', ')}; name it as SITE/NAME (e.g. ${sites[0]}/${idOrName}) or by id`,
        { details: { kind: 'machine', name: idOrName, sites, ids: rows.map((r) => r.id) } },
      );
    }
    return rows[0] && toMachine(rows[0]);
  }

  async getById(id: string): Promise<Machine> {
    const r = await this.ctx.db.selectFrom('machines').selectAll().where('id', '=', id).executeTakeFirst();
    if (r === undefined) throw notFound('machine', id);
    return toMachine(r);
  }

  async list(vaultId: string, filter?: MachineListFilter): Promise<Page<Machine>> {
    const { limit, offset } = paging(filter);
    let q = this.ctx.db
      .selectFrom('machines')
      .innerJoin('sites', 'sites.id', 'machines.site_id')
      .where('sites.vault_id', '=', vaultId);
    if (filter?.siteId !== undefined) q = q.where('machines.site_id', '=', filter.siteId);
    if (filter?.containerId !== undefined) q = q.where('machines.container_id', '=', filter.containerId);
    const [rows, total] = await Promise.all([
      q
        .selectAll('machines')
        .orderBy('sites.name')
        .orderBy('machines.name')
        .limit(limit)
        .offset(offset)
        .execute(),
      q.select((eb) => eb.fn.countAll().as('n')).executeTakeFirst(),
    ]);
    return { items: rows.map(toMachine), total: countOf(total) };
  }

  /** Updates the row with `m.id` if it exists, else the row with the same site and name, else inserts. */
  async upsert(m: New<Machine>): Promise<Machine> {
    return inTransaction(this.ctx, async (tx) => {
      const cols = machineColumns(m);
      const what = { kind: 'machine', key: m.name, op: 'write' } as const;
      let existing =
        m.id === undefined
          ? undefined
          : await tx.db.selectFrom('machines').select('id').where('id', '=', m.id).executeTakeFirst();
      existing ??= await tx.db
        .selectFrom('machines')
        .select('id')
        .where('site_id', '=', m.siteId)
        .where('name', '=', m.name)
        .executeTakeFirst();
      const id = existing?.id ?? newId(m.id);
      if (existing === undefined) {
        await guard(tx, what, () =>
          tx.db
            .insertInto('machines')
            .values({ id, ...cols })
            .execute(),
        );
      } else {
        await guard(tx, what, () => tx.db.updateTable('machines').set(cols).where('id', '=', id).execute());
      }
      return { id, ...m, updatedAt: cols.updated_at };
    });
  }

  async update(id: string, patch: Partial<Omit<Machine, 'id' | 'siteId'>>): Promise<Machine> {
    return inTransaction(this.ctx, async (tx) => {
      const current = await new KyselyMachineRepository(tx).getById(id);
      const next: Machine = { ...current, ...stripUndefined(patch), id, siteId: current.siteId };
      await guard(tx, { kind: 'machine', key: next.name, op: 'write' }, () =>
        tx.db.updateTable('machines').set(machineColumns(next)).where('id', '=', id).execute(),
      );
      return { ...next, updatedAt: isoTime(next.updatedAt, 'updatedAt') };
    });
  }

  async delete(id: string): Promise<void> {
    const r = await this.ctx.db.deleteFrom('machines').where('id', '=', id).executeTakeFirst();
    if (Number(r.numDeletedRows) === 0) throw notFound('machine', id);
  }
}

/** A patch without its `undefined` members, so spreading it never erases a field. */
export function stripUndefined<T extends object>(patch: T): Partial<T> {
  return Object.fromEntries(Object.entries(patch).filter(([, v]) => v !== undefined)) as Partial<T>;
}
