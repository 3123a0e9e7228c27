import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { Readable } from "node:stream";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { expect } from "vitest";
import type { DiskFormat } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskService, type Task } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";

/** PUTs a local file to a temporary upload URL, streaming it; expects 201. */
export async function putFile(url: string | URL, file: string): Promise<void> {
  const put = await fetch(url, {
    method: "PUT",
    body: Readable.toWeb(createReadStream(file)) as ReadableStream,
    headers: { "content-length": String((await stat(file)).size) },
    duplex: "half",
  } as RequestInit);
  expect(put.status, `PUT ${new URL(url).pathname}: ${await put.clone().text()}`).toBe(201);
}

/** Uploads a local file through a fresh temporary URL, streaming it; returns the seed URI. */
export async function uploadFile(baseUrl: string, file: string): Promise<string> {
  const { url, seedUri } = await createClient(TransferService, createGrpcTransport({ baseUrl })).createUploadUrl({});
  await putFile(url, file);
  return seedUri;
}

/** Follows a task with WatchTask to its terminal state. */
export async function watchToEnd(baseUrl: string, id: string): Promise<Task> {
  let last: Task | undefined;
  for await (const { task } of createClient(TaskService, createGrpcTransport({ baseUrl })).watchTask({ id })) last = task;
  return last!;
}

/** Uploads and imports a file as `diskFormat`, and follows the import to its end. */
export async function importFile(baseUrl: string, file: string, diskFormat: DiskFormat): Promise<Task> {
  const seedUri = await uploadFile(baseUrl, file);
  const { task } = await createClient(TransferService, createGrpcTransport({ baseUrl })).importImage({ seedUri, diskFormat });
  return watchToEnd(baseUrl, task!.id);
}
