export type ImageStatus = "queued" | "uploading" | "importing" | "active" | "killed" | "deleted";
export type DiskFormat = "raw" | "qcow2" | "vmdk" | "vhd" | "vhdx" | "vdi" | "iso";
export type ContainerFormat = "bare" | "ova";
export type LocationStatus = "pending" | "active" | "error";

export interface ImageLocation {
  store: string;
  uri: string;
  status: LocationStatus;
}

/** An image record as the repository keeps it; times are epoch milliseconds. */
export interface ImageRecord {
  id: string;
  name: string;
  owner: string;
  status: ImageStatus;
  diskFormat?: DiskFormat;
  containerFormat?: ContainerFormat;
  size: number;
  virtualSize: number;
  checksum: string;
  osHashAlgo: string;
  osHashValue: string;
  locations: ImageLocation[];
  /** Stored as uploaded, encrypted: it cannot be converted to another format without its key. */
  encrypted?: boolean;
  properties: Record<string, string>;
  createTime: number;
  updateTime: number;
  /** Grows by one with every change. */
  version: number;
}

export interface ImageFilter {
  owner?: string;
  /** Unset lists every status but deleted. */
  status?: ImageStatus;
  name?: string;
}

/** The fields an update may set; status changes go through the state machine below. */
export type ImagePatch = Partial<Omit<ImageRecord, "id" | "owner" | "status" | "createTime" | "updateTime" | "version">>;

const imageTransitions: Record<ImageStatus, readonly ImageStatus[]> = {
  queued: ["uploading", "importing", "killed", "deleted"],
  uploading: ["queued", "importing", "active", "killed", "deleted"],
  importing: ["queued", "active", "killed", "deleted"],
  active: ["deleted"],
  killed: ["deleted"],
  deleted: [],
};

/** The statuses an image may move to `next` from. */
export function imagePredecessors(next: ImageStatus): ImageStatus[] {
  return (Object.keys(imageTransitions) as ImageStatus[]).filter((from) =>
    imageTransitions[from].includes(next),
  );
}

export function newImageRecord(fields: Pick<ImageRecord, "id" | "owner"> & Partial<ImageRecord>, now: number): ImageRecord {
  return {
    name: "",
    status: "queued",
    size: 0,
    virtualSize: 0,
    checksum: "",
    osHashAlgo: "",
    osHashValue: "",
    locations: [],
    properties: {},
    ...fields,
    createTime: now,
    updateTime: now,
    version: 1,
  };
}
