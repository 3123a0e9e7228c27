import { create } from "@bufbuild/protobuf";
import { InvalidArgumentError, type Command } from "commander";
import {
  ContainerFormatSchema,
  CreateImageResponseSchema,
  DeleteImageResponseSchema,
  DiskFormatSchema,
  GetImageResponseSchema,
  ImageStatusSchema,
  ListImagesResponseSchema,
  LocationStatusSchema,
  type Image,
} from "../gen/imagetransfer/v1/image_pb.js";
import { addClientOptions, CALL_TIMEOUT_MS, fetchPages, runClient } from "./client.js";
import {
  enumChoices,
  enumName,
  enumOption,
  formatBytes,
  formatFields,
  formatTime,
  orDash,
  positiveInt,
  printJson,
  printList,
  type ClientOptions,
  type Column,
} from "./output.js";

interface ListOptions extends ClientOptions {
  status?: number;
  name?: string;
  pageSize?: number;
  pageToken?: string;
  all?: boolean;
}

interface CreateOptions extends ClientOptions {
  name?: string;
  diskFormat?: number;
  containerFormat?: number;
  property: Record<string, string>;
}

/** `--property k=v`, repeatable, collected into a map. */
function property(value: string, previous: Record<string, string>): Record<string, string> {
  const at = value.indexOf("=");
  if (at <= 0) throw new InvalidArgumentError(`expected KEY=VALUE, got "${value}"`);
  return { ...previous, [value.slice(0, at)]: value.slice(at + 1) };
}

const imageColumns: Column<Image>[] = [
  { header: "ID", value: (i) => i.id },
  { header: "NAME", value: (i) => orDash(i.name) },
  { header: "STATUS", value: (i) => enumName(ImageStatusSchema, i.status) },
  { header: "DISK", value: (i) => (i.diskFormat === 0 ? "-" : enumName(DiskFormatSchema, i.diskFormat)) },
  { header: "SIZE", value: (i) => (i.size === 0n ? "-" : formatBytes(i.size)), right: true },
  { header: "CREATED", value: (i) => formatTime(i.createTime) },
];

/** The human view of one image. */
export function formatImage(image: Image): string {
  const fields: Array<[string, string]> = [
    ["id", image.id],
    ["name", orDash(image.name)],
    ["owner", orDash(image.owner)],
    ["status", enumName(ImageStatusSchema, image.status)],
    ["disk format", image.diskFormat === 0 ? "-" : enumName(DiskFormatSchema, image.diskFormat)],
    ["container format", image.containerFormat === 0 ? "-" : enumName(ContainerFormatSchema, image.containerFormat)],
    ["size", image.size === 0n ? "-" : `${formatBytes(image.size)} (${image.size} bytes)`],
    ["virtual size", image.virtualSize === 0n ? "-" : `${formatBytes(image.virtualSize)} (${image.virtualSize} bytes)`],
    ["checksum", orDash(image.checksum)],
    ["hash", image.osHashValue ? `${image.osHashAlgo || "?"}:${image.osHashValue}` : "-"],
    ["created", formatTime(image.createTime)],
    ["updated", formatTime(image.updateTime)],
  ];
  if (image.locations.length === 0) fields.push(["locations", "-"]);
  for (const l of image.locations) fields.push(["location", `${l.uri} (store ${l.store}, ${enumName(LocationStatusSchema, l.status)})`]);
  const properties = Object.entries(image.properties).sort(([a], [b]) => a.localeCompare(b));
  if (properties.length === 0) fields.push(["properties", "-"]);
  for (const [k, v] of properties) fields.push([`property ${k}`, v]);
  return formatFields(fields);
}

/** `itx images ...`: the image catalogue. */
export function registerImages(program: Command): void {
  const images = program.command("images").description("list, show, create and delete images");

  addClientOptions(
    images
      .command("list")
      .description("list images in creation order (deleted images are left out unless --status deleted)")
      .option("--status <status>", `only images in this status: ${enumChoices(ImageStatusSchema).join(", ")}`, enumOption(ImageStatusSchema, "status"))
      .option("--name <name>", "only images with exactly this name")
      .option("--page-size <n>", "images per page, 1..1000 (server default 100)", positiveInt("--page-size"))
      .option("--page-token <token>", "continue from a previous page")
      .option("--all", "follow next_page_token and list every page"),
  ).action((opts: ListOptions) =>
    runClient(opts, async ({ images }) => {
      const request = { status: opts.status ?? 0, name: opts.name ?? "", pageSize: opts.pageSize ?? 0 };
      const page = await fetchPages(opts, (pageToken) =>
        images
          .listImages({ ...request, pageToken }, { timeoutMs: CALL_TIMEOUT_MS })
          .then((r) => ({ items: r.images, nextPageToken: r.nextPageToken })),
      );
      const response = create(ListImagesResponseSchema, { images: page.items, nextPageToken: page.nextPageToken });
      printList(opts.json, ListImagesResponseSchema, response, imageColumns, response.images, response.nextPageToken, "images");
    }),
  );

  addClientOptions(images.command("get").description("show one image").argument("<id>", "the image id (a UUID)")).action(
    (id: string, opts: ClientOptions) =>
      runClient(opts, async ({ images }) => {
        const response = await images.getImage({ id }, { timeoutMs: CALL_TIMEOUT_MS });
        if (opts.json) return printJson(GetImageResponseSchema, response);
        if (response.image) process.stdout.write(formatImage(response.image));
      }),
  );

  addClientOptions(
    images
      .command("create")
      .description("register a new image in status queued, ready for an import")
      .option("--name <name>", "the image name, up to 255 characters")
      .option("--disk-format <format>", `the declared disk format: ${enumChoices(DiskFormatSchema).join(", ")}`, enumOption(DiskFormatSchema, "disk format"))
      .option(
        "--container-format <format>",
        `the container format: ${enumChoices(ContainerFormatSchema).join(", ")}`,
        enumOption(ContainerFormatSchema, "container format"),
      )
      .option("--property <key=value>", "a free-form property; repeatable", property, {}),
  ).action((opts: CreateOptions) =>
    runClient(opts, async ({ images }) => {
      const response = await images.createImage(
        { name: opts.name ?? "", diskFormat: opts.diskFormat ?? 0, containerFormat: opts.containerFormat ?? 0, properties: opts.property },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      if (opts.json) return printJson(CreateImageResponseSchema, response);
      if (response.image) process.stdout.write(formatImage(response.image));
    }),
  );

  addClientOptions(
    images.command("delete").description("delete an image; it disappears from listings").argument("<id>", "the image id (a UUID)"),
  ).action((id: string, opts: ClientOptions) =>
    runClient(opts, async ({ images }) => {
      const response = await images.deleteImage({ id }, { timeoutMs: CALL_TIMEOUT_MS });
      if (opts.json) return printJson(DeleteImageResponseSchema, response);
      process.stdout.write(`deleted image ${response.image?.id ?? id}\n`);
    }),
  );
}
