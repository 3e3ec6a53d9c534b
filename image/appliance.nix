# nixosConfigurations.appliance: a minimal NixOS host that runs only the
# Canopy node. Images: `nixos-rebuild build-image --flake .#appliance
# --image-variant raw-efi` (or `qemu-efi` for qcow2), also exposed as
# packages.<system>.appliance-raw-efi and appliance-qcow2.
self:
{ lib, modulesPath, ... }:
{
  imports = [
    self.nixosModules.canopy
    (modulesPath + "/profiles/minimal.nix")
  ];

  services.canopy = {
    enable = true;
    http.port = 80;
    openFirewall = true;
    # The admin API and Git remote stay on 127.0.0.1: reach them through
    # `ssh -L 7070:127.0.0.1:7070 root@HOST`.
  };

  # Layout of the image builder's disk (nixos/modules/virtualisation/disk-image.nix
  # sets the same labels; this makes the configuration itself complete).
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
    autoResize = true;
  };
  fileSystems."/boot" = {
    device = "/dev/disk/by-label/ESP";
    fsType = "vfat";
  };
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = false;
  boot.growPartition = true;
  boot.kernelParams = [ "console=ttyS0" ];

  networking.hostName = "canopy";
  networking.useDHCP = true;
  networking.firewall.enable = true;

  # No password logins anywhere: SSH keys only. Add keys with
  # users.users.root.openssh.authorizedKeys.keys in a module of your own.
  services.openssh = {
    enable = true;
    openFirewall = true;
    settings = {
      PasswordAuthentication = false;
      KbdInteractiveAuthentication = false;
      PermitRootLogin = "prohibit-password";
    };
  };
  users.mutableUsers = false;
  users.users.root.hashedPassword = "!";

  # The store is mounted read-only; nothing but the node's state is mutable.
  boot.readOnlyNixStore = true;
  nix.settings.allowed-users = [ "root" ];
  documentation.enable = false;
  environment.defaultPackages = lib.mkForce [ ];

  system.stateVersion = "25.05";
}
