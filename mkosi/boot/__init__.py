"""Boot loaders and boot artifacts, one module each:

* `kernel`: finding a root tree's kernel, os-release and EFI binaries (`BootFiles`).
* `cmdline`: splitting and assembling kernel command lines.
* `initrd`: dracut inside the image.
* `pe`: reading PE/COFF headers; `uki`: unified kernel images from systemd's EFI stub.
* `systemd_boot`: systemd-boot and Boot Loader Specification Type #1 entries.
* `grub`: GRUB for BIOS on a GPT disk, written straight into the image file.
* `signing`: Secure Boot signatures and key generation.
* `esp`: filling an EFI system partition directory from `BootFiles` (no disk image needed).
* `bootable`: Bootable=yes for disk images, the only module that reads the build's Context.
"""
