/** Who is calling, as established by authentication. */
export interface Principal {
  subject: string;
  /** The project the caller acts in: it owns what the caller creates. */
  project: string;
  roles: string[];
}
