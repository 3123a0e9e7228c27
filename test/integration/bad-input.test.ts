import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newId } from "../../src/core/ids.js";
import { TaskHub } from "../../src/core/task-hub.js";
import { newTaskRecord } from "../../src/core/task.js";
import { DiskFormat, ImageService } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskService } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { Tokens } from "../../src/tokens.js";
import { startTestService, type TestService } from "../helpers/service.js";

/** Every bad request gets the right status and a message a person can act on. */
describe("bad input", () => {
  let service: TestService;
  let images: ReturnType<typeof createClient<typeof ImageService>>;
  let tasks: ReturnType<typeof createClient<typeof TaskService>>;

  beforeAll(async () => {
    // role "api": the tasks made here are the test's, not work for a runner.
    service = await startTestService({ role: "api" });
    const transport = createGrpcTransport({ baseUrl: service.url });
    images = createClient(ImageService, transport);
    tasks = createClient(TaskService, transport);
  });
  afterAll(() => service?.stop());

  const refused = (call: Promise<unknown>, code: Code, message: RegExp) =>
    expect(call).rejects.toMatchObject({ code, rawMessage: expect.stringMatching(message) });

  // A newer client may send numbers this server's enums do not define.
  const undefinedEnum = (n: number) => n as never;

  it("refuses enum values the API does not define", async () => {
    await refused(tasks.listTasks({ state: undefinedEnum(99) }), Code.InvalidArgument, /^state has unknown value 99$/);
    await refused(tasks.listTasks({ type: undefinedEnum(7) }), Code.InvalidArgument, /^type has unknown value 7$/);
    await refused(images.listImages({ status: undefinedEnum(42) }), Code.InvalidArgument, /^status has unknown value 42$/);
    await refused(images.createImage({ diskFormat: undefinedEnum(77) }), Code.InvalidArgument, /^disk_format has unknown value 77$/);
  });

  it("refuses ids that are not UUIDs, naming the field", async () => {
    await refused(images.getImage({ id: "" }), Code.InvalidArgument, /^id is required$/);
    await refused(tasks.listTasks({ imageId: "abc" }), Code.InvalidArgument, /^image_id must be a UUID, got "abc"$/);
    await refused(tasks.cancelTask({ id: "../etc" }), Code.InvalidArgument, /^id must be a UUID/);
  });

  it("refuses page sizes out of range and tokens from other queries", async () => {
    await refused(images.listImages({ pageSize: -1 }), Code.InvalidArgument, /^page_size must be between 1 and 1000, got -1$/);
    await refused(images.listImages({ pageSize: 1001 }), Code.InvalidArgument, /page_size/);
    for (let i = 0; i < 3; i++) await images.createImage({ name: `paged-${i}` });
    const { nextPageToken } = await images.listImages({ pageSize: 1 });
    expect(nextPageToken).not.toBe("");
    await refused(images.listImages({ pageSize: 1, pageToken: nextPageToken, name: "other" }), Code.InvalidArgument, /other filters/);
    await refused(images.listImages({ pageToken: "not a token!" }), Code.InvalidArgument, /page_token is not a token this service issued/);
  });

  it("refuses updates the API does not allow, and checks sizes", async () => {
    const { image } = await images.createImage({ name: "u" });
    await refused(images.updateImage({ image: { id: image!.id, owner: "x" }, updateMask: { paths: ["owner"] } }), Code.InvalidArgument, /"owner", which cannot be updated/);
    await refused(images.updateImage({ image: { id: image!.id } }), Code.InvalidArgument, /update_mask must name at least one field/);
    await refused(images.updateImage({ updateMask: { paths: ["name"] } }), Code.InvalidArgument, /image is required/);
    await refused(images.createImage({ name: "n".repeat(256) }), Code.InvalidArgument, /name is longer than 255/);
    const properties = Object.fromEntries(Array.from({ length: 129 }, (_, i) => [`k${i}`, "v"]));
    await refused(images.createImage({ properties }), Code.InvalidArgument, /at most 128 properties/);
  });

  it("changes formats only while an image is QUEUED", async () => {
    const { image } = await images.createImage({ name: "f", diskFormat: DiskFormat.QCOW2 });
    const updated = await images.updateImage({ image: { id: image!.id, diskFormat: DiskFormat.RAW }, updateMask: { paths: ["disk_format"] } });
    expect(updated.image?.diskFormat).toBe(DiskFormat.RAW);
    await service.container.resolve(Tokens.Repository).updateImage(image!.id, { status: "importing" });
    await refused(
      images.updateImage({ image: { id: image!.id, diskFormat: DiskFormat.VMDK }, updateMask: { paths: ["disk_format"] } }),
      Code.FailedPrecondition,
      /is IMPORTING and cannot be changed/,
    );
  });

  it("gives NOT_FOUND for deleted and unknown images, and for a second delete", async () => {
    const { image } = await images.createImage({ name: "gone" });
    await images.deleteImage({ id: image!.id });
    await refused(images.deleteImage({ id: image!.id }), Code.NotFound, /^image .* not found$/);
    await refused(images.getImage({ id: newId() }), Code.NotFound, /not found/);
  });

  it("lets exactly one of two racing cancels win; the other learns why", async () => {
    const hub = service.container.resolve(TaskHub);
    const task = await hub.create(newTaskRecord({ id: newId(), type: "import", imageId: newId(), owner: "default" }, Date.now()));
    const results = await Promise.allSettled([tasks.cancelTask({ id: task.id }), tasks.cancelTask({ id: task.id })]);
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    const lost = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
    expect(lost.reason).toMatchObject({ code: Code.FailedPrecondition, rawMessage: expect.stringMatching(/is CANCELED and cannot become CANCELED/) });
  });
});
